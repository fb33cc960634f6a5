"""botocore's model of the lean transport's operations, read once per client.

Where each parameter of a request goes (its header, and how botocore writes its value), and how
an answer's headers become the fields of the response dictionary (which header is which field,
parsed as botocore parses it, and which are the object's metadata). The lean transport
(:mod:`router._s3.lean`) reads the model here once, at start-up, and keeps how each set of
answer header names is read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from botocore.httpchecksum import resolve_response_checksum_algorithms
from botocore.utils import parse_timestamp

if TYPE_CHECKING:
    from botocore.model import OperationModel, Shape


def _boolean_header(value: Any) -> str:
    return "true" if value else "false"


def _header_writer(shape: Shape) -> Callable[[Any], str]:
    """How botocore serializes a parameter of ``shape`` into a header (the types S3 objects use)."""
    if shape.type_name == "boolean":
        return _boolean_header
    return str


class Operation:
    """One operation's model, read once: where each parameter goes, what each header means."""

    __slots__ = (
        "checksum_context",
        "defaults",
        "headers_in",
        "headers_out",
        "meta_in",
        "meta_out",
        "model",
        "output_shape",
        "readings",
    )

    MAX_READINGS = 256

    def __init__(self, model: OperationModel, config: Any) -> None:
        self.model = model
        self.headers_in: dict[str, tuple[str, Callable[[Any], str]]] = {}
        self.meta_in = ""
        assert model.input_shape is not None
        for name, member in model.input_shape.members.items():
            location = member.serialization.get("location")
            if location == "header":
                self.headers_in[name] = (member.serialization["name"], _header_writer(member))
            elif location == "headers":
                self.meta_in = member.serialization.get("name", "")
        self.headers_out: dict[str, tuple[str, Callable[[str], Any]]] = {}
        self.meta_out = ""
        assert model.output_shape is not None
        self.output_shape: Shape = model.output_shape
        for name, member in model.output_shape.members.items():
            location = member.serialization.get("location")
            if location == "header" and name != "Expires":  # botocore keeps it a string
                self.headers_out[member.serialization["name"].lower()] = (
                    name,
                    _parser_of(member.type_name),
                )
            elif location == "headers":
                self.meta_out = member.serialization.get("name", "").lower()
        # What botocore adds to every call of the operation: with the default
        # response_checksum_validation (when_supported), ChecksumMode=ENABLED on GetObject and
        # HeadObject unless the caller says otherwise.
        mode_member = model.http_checksum.get("requestValidationModeMember")
        self.defaults: dict[str, str] = {}
        if mode_member and getattr(config, "response_checksum_validation", None) == (
            "when_supported"
        ):
            self.defaults[mode_member] = "ENABLED"
        # The response checksums botocore validates when ChecksumMode is ENABLED.
        request: dict[str, Any] = {"context": {}}
        if mode_member:
            resolve_response_checksum_algorithms(request, model, {mode_member: "ENABLED"})
        self.checksum_context: dict[str, Any] = request["context"]
        self.readings: dict[tuple[bytes, ...], Reading] = {}

    def reading(self, names: tuple[bytes, ...]) -> Reading:
        """How an answer with these header names (as sent, in order) is read, kept (bounded).

        An operation's answers mostly carry the same names (a GET's differ by its metadata).
        """
        reading = self.readings.get(names)
        if reading is None:
            if len(self.readings) >= self.MAX_READINGS:
                self.readings.clear()
            reading = self.readings[names] = self._read(names)
        return reading

    def _read(self, names: tuple[bytes, ...]) -> Reading:
        lowered = tuple(name.decode("utf-8").lower() for name in names)
        fields: list[tuple[str, str, Callable[[str], Any]]] = []
        metas: list[tuple[str, str]] = []
        prefix = self.meta_out
        for name in dict.fromkeys(lowered):  # each name once, where it first came
            field = self.headers_out.get(name)
            if field is not None:
                fields.append((name, field[0], field[1]))
            elif prefix and name.startswith(prefix):
                metas.append((name, name[len(prefix) :]))
        return Reading(lowered, tuple(fields), tuple(metas))


class Reading(NamedTuple):
    """How an answer with given header names is read.

    Each name lowercased (``names``, by position), the model's field and parser of each
    header that has one (``fields``), and the metadata key of each ``x-amz-meta-`` header
    (``metas``).
    """

    names: tuple[str, ...]
    fields: tuple[tuple[str, str, Callable[[str], Any]], ...]
    metas: tuple[tuple[str, str], ...]


def _parser_of(type_name: str) -> Callable[[str], Any]:
    if type_name in ("integer", "long"):
        return int
    if type_name == "boolean":
        return lambda value: value == "true"
    if type_name == "timestamp":
        return _http_date
    return str


def _http_date(value: str) -> datetime:
    """A timestamp header: S3 sends HTTP dates (``Tue, 01 Dec 2026 04:20:19 GMT``).

    Parsed by the standard library (about 6 us) rather than botocore's dateutil-based
    ``parse_timestamp`` (about 100 us), which takes over for any other form.
    """
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        fallback: datetime = parse_timestamp(value)
        return fallback
    return parsed
