"""One audit context per operation: one event and one span, object keys only as keyed hashes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from importlib import metadata
from types import TracebackType
from typing import Any, Literal

from router.errors import DirectoryUnavailableError, RegionUnavailableError

try:  # the `otel` extra: spans only when OpenTelemetry is installed and configured
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import ProxyTracerProvider, Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra
    _trace = None  # type: ignore[assignment]

AUDIT_LOGGER = "router.audit"
TRACER_NAME = "router"

try:
    VERSION = metadata.version("residency-router")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = "0+unknown"

# A library must not print through logging's last-resort handler: the embedding
# service decides where audit events go.
logging.getLogger(AUDIT_LOGGER).addHandler(logging.NullHandler())

Outcome = Literal["ok", "skipped", "refused", "error", "partial"]

# Failures of a backend, not refusals, even before anything was sent.
_BACKEND_FAILURES = (DirectoryUnavailableError, RegionUnavailableError)


class AuditLog:
    """Emits one structured event per public operation, on ``router.audit``.

    Events carry ids and outcomes, never object contents; an object key appears only as an
    HMAC-SHA256 under ``secret`` so it cannot be recovered by guessing keys. Without a
    configured secret a random per-process one is used: hashes are then comparable only
    within one process.
    """

    __slots__ = ("_logger", "_secret")

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)
        self._logger = logging.getLogger(AUDIT_LOGGER)
        _load_tracer_provider()

    def key_hash(self, key: str) -> str:
        """Return the keyed hash of an object key (hex, 32 characters)."""
        digest = hmac.new(self._secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def enabled(self, error: bool = False) -> bool:
        """Return True when an event would be logged or traced (skip building it if not)."""
        return _tracer() is not None or self._logger.isEnabledFor(
            logging.WARNING if error else logging.INFO
        )

    def operation(self, name: str, org_id: object = "*", *, current: bool = True) -> OperationAudit:
        """Return the audit context of one operation (enter it before validating anything).

        ``current=False`` keeps its span out of the context (async generators: the caller's
        own work between items must not nest under it).
        """
        return OperationAudit(self, name, org_id, current)

    def _emit(self, event: dict[str, object], outcome: Outcome) -> None:
        level = logging.INFO if outcome in ("ok", "skipped", "partial") else logging.WARNING
        if not self._logger.isEnabledFor(level):
            return
        self._logger.log(
            level,
            "%s org=%s outcome=%s",
            event["event"],
            event["org_id"],
            outcome,
            extra={"audit": event},
        )


class OperationAudit:
    """The audit context of one public operation: exactly one event, and one span.

    Outcomes: ``ok``; ``skipped`` (policy stored nothing); ``refused`` (an error before the
    operation acted: bad input, unknown org, a policy refusal); ``error`` (the directory or
    the region failed, or the operation failed once acting, cancellation included);
    ``partial`` (a stream or listing closed early: ``bytes`` says how much was read).
    """

    __slots__ = (
        "_acting",
        "_audit",
        "_current",
        "_outcome",
        "_span",
        "_token",
        "bytes",
        "data_class",
        "items",
        "key",
        "name",
        "org_id",
        "region",
        "started",
    )

    def __init__(self, audit: AuditLog, name: str, org_id: object, current: bool) -> None:
        self._audit = audit
        self.name = name
        self.org_id = org_id if isinstance(org_id, str) else "?"
        self._current = current
        self.region: str | None = None
        self.data_class: str | None = None
        self.key: str | None = None
        self.bytes: int | None = None
        self.items: int | None = None
        self._acting = False
        self._outcome: Outcome = "ok"
        self._span: Any = None
        self._token: object = None
        self.started = 0.0

    def __enter__(self) -> OperationAudit:
        self.started = time.perf_counter()
        tracer = _tracer()
        if tracer is not None:
            self._span = tracer.start_span("residency." + self.name)
            if self._current:
                self._token = _context.attach(_trace.set_span_in_context(self._span))
        return self

    def at(self, region: str, data_class: str | None = None, key: str | None = None) -> None:
        """Name where the operation acts (its region, data class and full key).

        ``region`` and ``data_class`` may be the members themselves (``Region``, ``DataClass``
        are ``StrEnum``): the event carries their plain values, made only when it is built
        (``.value`` on a member costs about 0.2 us, twice on every put).
        """
        self.region = region
        self.data_class = data_class
        self.key = key

    def active(self) -> contextlib.AbstractContextManager[object]:
        """Make the span current while the block runs (a generator's own work, not its caller's)."""
        span = self._span
        if span is None:
            return contextlib.nullcontext()
        return _trace.use_span(span, end_on_exit=False)

    def acting(self) -> None:
        """From here on the operation acts: a failure is an ``error``, not a refusal."""
        self._acting = True

    def skipped(self) -> None:
        """Policy decided to store nothing (zero data retention, an endpoint's rule)."""
        self._outcome = "skipped"

    def partial(self) -> None:
        """The caller stopped reading before the end."""
        self._outcome = "partial"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome = self._outcome
        error: str | None = None
        if exc is not None and outcome != "partial":
            error = type(exc).__name__
            refused = not self._acting and not isinstance(exc, _BACKEND_FAILURES)
            outcome = "refused" if refused and isinstance(exc, Exception) else "error"
        self._finish(outcome, error)

    def _finish(self, outcome: Outcome, error: str | None) -> None:
        audit = self._audit
        span = self._span
        if span is None and not audit._logger.isEnabledFor(
            logging.INFO if error is None else logging.WARNING
        ):
            return
        event: dict[str, object] = {
            "event": "residency." + self.name,
            "org_id": self.org_id,
            "region": None if self.region is None else str(self.region),
            "operation": self.name,
            "data_class": None if self.data_class is None else str(self.data_class),
            "outcome": outcome,
            "latency_ms": round((time.perf_counter() - self.started) * 1000.0, 3),
        }
        if self.key is not None:
            event["key_hash"] = audit.key_hash(self.key)
        if self.bytes is not None:
            event["bytes"] = self.bytes
        if self.items is not None:
            event["items"] = self.items
        if error is not None:
            event["error"] = error
        if span is not None:
            _end_span(span, event, self._token)
        audit._emit(event, outcome)


def _end_span(span: Any, event: dict[str, object], token: object) -> None:
    # The span carries the event's ids and outcome, never content or a plain key.
    for name, value in event.items():
        if value is not None and name != "event" and isinstance(value, str | int | float):
            span.set_attribute(f"residency.{name}", value)
    if "error" in event:
        span.set_attribute("error.type", str(event["error"]))
        if event["outcome"] in ("error", "refused"):
            span.set_status(Status(StatusCode.ERROR, str(event["error"])))
    span.end()
    if token is not None:
        with contextlib.suppress(ValueError):  # left in another context (a moved task)
            _context.detach(token)  # type: ignore[arg-type]


_TRACERS: dict[int, Any] = {}
_UNKNOWN = object()


def _tracer() -> Any:
    """Return the router's tracer, or None unless an OpenTelemetry SDK is configured.

    On the hot path this is one module attribute read: the API keeps the configured provider
    in ``_TRACER_PROVIDER`` (set once, by ``set_tracer_provider`` or on the first
    ``get_tracer_provider`` when ``OTEL_PYTHON_TRACER_PROVIDER`` names one, which
    every :class:`AuditLog` triggers when it is made). Should a later API drop that
    attribute, the public call is used instead.
    """
    if _trace is None:
        return None  # type: ignore[unreachable]
    provider: Any = getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None:
        return None
    if provider is _UNKNOWN:
        provider = _trace.get_tracer_provider()
    if isinstance(provider, ProxyTracerProvider):
        return None
    tracer = _TRACERS.get(id(provider))
    if tracer is None:
        tracer = _TRACERS[id(provider)] = provider.get_tracer(TRACER_NAME, VERSION)
    return tracer


def _load_tracer_provider() -> None:
    """Let OpenTelemetry load a provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` (at start)."""
    if _trace is not None:
        _trace.get_tracer_provider()
