"""RegionMap: the validated regions.yaml (regions, processing, retention, static orgs)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from router._orgrecord import org_record, processing_region_problem, record_fields
from router.errors import ConfigError
from router.inputs import kind_of
from router.types import (
    PROCESSING_REGIONS,
    AwsRegion,
    OrgResidency,
    Region,
)

MAX_FILE_BYTES = 1024 * 1024

ALLOWED_AWS_REGIONS: Mapping[Region, frozenset[str]] = MappingProxyType(
    {
        Region.US: frozenset({"us-east-1", "us-east-2", "us-west-1", "us-west-2"}),
        # Not eu-west-2 (London) or eu-central-2 (Zurich): outside the EU.
        Region.EU: frozenset(
            {"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"}
        ),
        Region.JP: frozenset({"ap-northeast-1", "ap-northeast-3"}),
        Region.CA: frozenset({"ca-central-1", "ca-west-1"}),
        Region.KR: frozenset({"ap-northeast-2"}),
        Region.SG: frozenset({"ap-southeast-1"}),
        Region.IN: frozenset({"ap-south-1", "ap-south-2"}),
    }
)

# \A...\Z, never ^...$ ($ also matches before a trailing newline), and ASCII digits only
# ([0-9], never \d, which matches Arabic-Indic and every other Unicode digit).
_KMS_ARN = re.compile(
    r"\Aarn:aws:kms:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):(?P<kind>key|alias)"
    r"/(?P<name>[A-Za-z0-9/_+=.@-]+)\Z"
)
_BUCKET = re.compile(r"\A[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")
_ACCOUNT = re.compile(r"\A[0-9]{12}\Z")
_ENDPOINT_PATH = re.compile(r"\A(/[A-Za-z0-9._~-]+)+\Z")


@dataclass(frozen=True, slots=True)
class KmsKeyArn:
    """A parsed KMS key or alias ARN."""

    arn: str
    aws_region: AwsRegion
    account: str
    is_alias: bool


def parse_kms_arn(value: str) -> KmsKeyArn | None:
    """Parse a KMS key or alias ARN; return None when ``value`` is not one."""
    match = _KMS_ARN.match(value)
    if match is None:
        return None
    return KmsKeyArn(
        arn=value,
        aws_region=AwsRegion(match["region"]),
        account=match["account"],
        is_alias=match["kind"] == "alias",
    )


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """One residency region's storage and processing settings."""

    region: Region
    aws_region: AwsRegion
    bucket: str
    kms_key: str
    processing_endpoint: str | None = None
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointRule:
    """How one processing endpoint path is treated."""

    path: str
    regional: bool
    retains_data: bool = True


@dataclass(frozen=True, slots=True)
class ProcessingConfig:
    """Where processing goes: the default region and the listed endpoints."""

    default_region: Region
    endpoints: Mapping[str, EndpointRule]


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """The inputs/outputs retention windows."""

    inputs_outputs_days: int
    allowed_days: tuple[int, ...]


# Raw schema: strict types, unknown fields refused. Semantic checks follow in _check.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _RawRegion(_Strict):
    aws_region: StrictStr
    bucket: StrictStr
    kms_key: StrictStr
    processing_endpoint: StrictStr | None = None
    account_id: StrictStr | None = None


class _RawEndpoint(_Strict):
    regional: StrictBool
    retains_data: StrictBool = True


class _RawProcessing(_Strict):
    default_region: StrictStr = "us"
    endpoints: dict[StrictStr, _RawEndpoint] = {}


class _RawRetention(_Strict):
    inputs_outputs_days: StrictInt = 30
    allowed_days: list[StrictInt] = [1, 7, 30]


class _RawMap(_Strict):
    regions: dict[StrictStr, _RawRegion]
    processing: _RawProcessing = _RawProcessing()
    retention: _RawRetention = _RawRetention()
    orgs: dict[StrictStr, Any] = {}


class RegionMap:
    """The validated region map: one bucket and KMS key per residency region.

    Build it with :meth:`load`, :meth:`from_yaml` or :meth:`from_dict`; each raises one
    :class:`~router.errors.ConfigError` listing every problem with its field path.
    """

    __slots__ = ("_by_aws_region", "orgs", "processing", "regions", "retention")

    def __init__(
        self,
        regions: Mapping[Region, RegionConfig],
        processing: ProcessingConfig,
        retention: RetentionConfig,
        orgs: Mapping[str, OrgResidency],
    ) -> None:
        self.regions: Mapping[Region, RegionConfig] = MappingProxyType(dict(regions))
        self.processing = processing
        self.retention = retention
        self.orgs: Mapping[str, OrgResidency] = MappingProxyType(dict(orgs))
        self._by_aws_region = {cfg.aws_region: cfg for cfg in regions.values()}

    @classmethod
    def load(cls, path: str | Path) -> RegionMap:
        """Read and validate a regions.yaml file (blocking: call it off the event loop).

        Raises:
            ConfigError: the file is missing, unreadable or invalid.
        """
        path = Path(path)
        try:
            # The limit holds while reading: a FIFO or a growing file has no honest size.
            with path.open("rb") as stream:
                raw = stream.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise ConfigError(f"{path}: over {MAX_FILE_BYTES} bytes; that is not a region map")
            text = raw.decode("utf-8")
        except ConfigError:
            raise
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the region map ({exc.strerror})") from exc
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "regions.yaml") -> RegionMap:
        """Parse and validate region-map YAML text.

        Raises:
            ConfigError: the YAML is malformed, has duplicate keys, or the map is invalid.
        """
        try:
            # The reader rejects unprintable characters already while being built.
            loader = _UniqueKeyLoader(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        except RecursionError:
            raise ConfigError(f"{source}: nested too deeply to be a region map") from None
        finally:
            loader.dispose()
        found = [f"{source} {problem}" for problem in loader.problems]
        try:
            return cls.from_dict(data, extra_problems=found)
        except RecursionError:
            raise ConfigError(f"{source}: nested too deeply to be a region map") from None

    @classmethod
    def from_dict(cls, data: object, *, extra_problems: list[str] | None = None) -> RegionMap:
        """Validate an already-parsed region map.

        Raises:
            ConfigError: listing every problem with its field path.
        """
        problems = list(extra_problems or [])
        if not isinstance(data, Mapping):
            problems.append(f"(top level): expected a mapping, got {kind_of(data)}")
            raise ConfigError(problems)
        try:
            raw = _RawMap.model_validate(data)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc))
            raise ConfigError(problems) from None
        built = _build(raw, problems)
        if problems or built is None:
            raise ConfigError(problems)
        return built

    def org_record(self, org_id: object, fields: object) -> tuple[OrgResidency | None, list[str]]:
        """Validate one org record against this map (see :func:`org_record`)."""
        return org_record(
            org_id,
            fields,
            configured={region.value for region in self.regions},
            without_endpoint={cfg.region.value for cfg in self if cfg.processing_endpoint is None},
            default_days=self.retention.inputs_outputs_days,
            allowed_days=self.retention.allowed_days,
        )

    def check_org(self, record: object) -> tuple[OrgResidency | None, list[str]]:
        """Validate a record a directory returned; return it normalised, or the problems."""
        if not isinstance(record, OrgResidency):
            return None, [f": a directory must return OrgResidency, got {kind_of(record)}"]
        fields = record_fields(record)
        checked, problems = self.org_record(record.org_id, fields)
        # In a record object the regions are Region members: a plain "eu" is a caller's bug.
        for name in ("region", "processing_region"):
            value = fields[name]
            if value is not None and not isinstance(value, Region):
                problems.append(f".{name}: expected a Region, got {kind_of(value)} {value!r}")
        return (checked if not problems else None), problems

    def region(self, region: Region) -> RegionConfig:
        """Return one residency region's settings.

        Raises:
            ConfigError: the map has no such region.
        """
        try:
            return self.regions[region]
        except KeyError:
            raise ConfigError(f"regions.{region}: not configured in the region map") from None

    def by_aws_region(self, aws_region: str) -> RegionConfig | None:
        """Return the residency region served from ``aws_region``, if any."""
        return self._by_aws_region.get(AwsRegion(aws_region))

    def __iter__(self) -> Iterator[RegionConfig]:
        return iter(self.regions.values())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that reports duplicate keys (instead of keeping the last) and merge keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                self.problems.append(
                    f"line {line}: merge keys (<<) are not supported; write the fields out"
                )
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable keys are reported by the constructor below
            if duplicate:
                line = key_node.start_mark.line + 1
                self.problems.append(f"line {line}: duplicate key {key!r}")
        return super().construct_mapping(node, deep=deep)


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{loc}: {message}")
    return problems


def _https_base(value: str) -> str | None:
    # urlsplit silently drops tabs and newlines (WHATWG): refuse them before it can.
    if not value.isprintable() or any(c.isspace() for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        return None
    if parts.username or parts.password:
        return None
    return value.rstrip("/")


def _build(raw: _RawMap, problems: list[str]) -> RegionMap | None:
    regions = _build_regions(raw, problems)
    processing = _build_processing(raw, regions, problems)
    retention = _build_retention(raw, problems)
    orgs = _build_orgs(raw, regions, retention, problems)
    if problems or processing is None or retention is None:
        return None
    return RegionMap(regions, processing, retention, orgs)


def _build_regions(raw: _RawMap, problems: list[str]) -> dict[Region, RegionConfig]:
    regions: dict[Region, RegionConfig] = {}
    if not raw.regions:
        problems.append("regions: at least one residency region is required")
    buckets: dict[str, str] = {}
    aws_seen: dict[str, str] = {}
    for code, entry in raw.regions.items():
        path = f"regions.{code}"
        try:
            region = Region(code)
        except ValueError:
            allowed = ", ".join(r.value for r in Region)
            problems.append(f"{path}: unknown residency region {code!r} (one of {allowed})")
            continue
        before = len(problems)
        allowed_aws = ALLOWED_AWS_REGIONS[region]
        if entry.aws_region not in allowed_aws:
            problems.append(
                f"{path}.aws_region: {entry.aws_region!r} is not allowed for {code} "
                f"(allowed: {', '.join(sorted(allowed_aws))})"
            )
        if entry.aws_region in aws_seen:
            problems.append(
                f"{path}.aws_region: {entry.aws_region} is already used by "
                f"regions.{aws_seen[entry.aws_region]}"
            )
        aws_seen.setdefault(entry.aws_region, code)
        if not _BUCKET.match(entry.bucket) or "--" in entry.bucket[:4]:
            problems.append(
                f"{path}.bucket: {entry.bucket!r} is not a valid bucket name "
                "(3-63 lowercase letters, digits and '-'; no dots, which break TLS)"
            )
        if entry.bucket in buckets:
            problems.append(
                f"{path}.bucket: {entry.bucket!r} is already used by "
                f"regions.{buckets[entry.bucket]}"
            )
        buckets.setdefault(entry.bucket, code)
        arn = parse_kms_arn(entry.kms_key)
        if arn is None:
            problems.append(
                f"{path}.kms_key: expected a KMS key or alias ARN "
                "(arn:aws:kms:<aws region>:<account>:key/<id> or .../alias/<name>)"
            )
        elif arn.aws_region != entry.aws_region:
            problems.append(
                f"{path}.kms_key: key is in {arn.aws_region}, bucket region is {entry.aws_region}"
            )
        endpoint = None
        if entry.processing_endpoint is not None:
            endpoint = _https_base(entry.processing_endpoint)
            if endpoint is None:
                problems.append(
                    f"{path}.processing_endpoint: must be an https:// URL with a host and no "
                    f"query, got {entry.processing_endpoint!r}"
                )
            elif region not in PROCESSING_REGIONS:
                problems.append(
                    f"{path}.processing_endpoint: processing is offered only in "
                    f"{', '.join(sorted(PROCESSING_REGIONS))}"
                )
        if entry.account_id is not None and not _ACCOUNT.match(entry.account_id):
            problems.append(f"{path}.account_id: must be 12 digits (quote it in YAML)")
        if len(problems) == before:
            regions[region] = RegionConfig(
                region=region,
                aws_region=AwsRegion(entry.aws_region),
                bucket=entry.bucket,
                kms_key=entry.kms_key,
                processing_endpoint=endpoint,
                account_id=entry.account_id,
            )
    logs: dict[str, str] = {}
    for code, entry in raw.regions.items():
        log = log_bucket_name(entry.bucket)
        if log in buckets:
            problems.append(
                f"regions.{code}.bucket: its access-log bucket {log!r} is the data bucket of "
                f"regions.{buckets[log]}"
            )
        if log in logs:
            problems.append(
                f"regions.{code}.bucket: its access-log bucket {log!r} is also the log bucket "
                f"of regions.{logs[log]}"
            )
        logs.setdefault(log, code)
    return regions


def log_bucket_name(bucket: str) -> str:
    """Return the name of the in-region access-log bucket of a data bucket."""
    return f"{bucket[:58]}-logs"


def _build_processing(
    raw: _RawMap, regions: Mapping[Region, RegionConfig], problems: list[str]
) -> ProcessingConfig | None:
    section = raw.processing
    problem = processing_region_problem(
        section.default_region, raw.regions.keys(), _without_endpoint(raw)
    )
    if problem is not None:
        problems.append(f"processing.default_region: {problem}")
    endpoints: dict[str, EndpointRule] = {}
    for path, rule in section.endpoints.items():
        if not _ENDPOINT_PATH.match(path) or any(seg in (".", "..") for seg in path.split("/")):
            problems.append(
                f"processing.endpoints.{path}: an endpoint is an exact path such as "
                "/v1/chat/completions (letters, digits, '.', '_', '~', '-' between slashes)"
            )
            continue
        endpoints[path] = EndpointRule(path, rule.regional, rule.retains_data)
    if problem is not None:
        return None
    return ProcessingConfig(Region(section.default_region), MappingProxyType(endpoints))


def _build_retention(raw: _RawMap, problems: list[str]) -> RetentionConfig | None:
    section = raw.retention
    before = len(problems)
    allowed = section.allowed_days
    if not allowed:
        problems.append("retention.allowed_days: list at least one window")
    for index, days in enumerate(allowed):
        if not 1 <= days <= 3650:
            problems.append(f"retention.allowed_days.{index}: {days} is not between 1 and 3650")
    if len(set(allowed)) != len(allowed):
        problems.append("retention.allowed_days: windows must not repeat")
    if section.inputs_outputs_days not in allowed:
        problems.append(
            f"retention.inputs_outputs_days: {section.inputs_outputs_days} is not one of "
            f"allowed_days {sorted(allowed)}"
        )
    if len(problems) != before:
        return None
    return RetentionConfig(section.inputs_outputs_days, tuple(sorted(allowed)))


def _build_orgs(
    raw: _RawMap,
    regions: Mapping[Region, RegionConfig],
    retention: RetentionConfig | None,
    problems: list[str],
) -> dict[str, OrgResidency]:
    orgs: dict[str, OrgResidency] = {}
    for org_id, entry in raw.orgs.items():
        record, found = org_record(
            org_id,
            entry,
            configured=raw.regions.keys(),
            without_endpoint=_without_endpoint(raw),
            default_days=raw.retention.inputs_outputs_days,
            allowed_days=None if retention is None else retention.allowed_days,
        )
        problems.extend(f"orgs.{org_id}{problem}" for problem in found)
        if record is not None:
            orgs[org_id] = record
    return orgs


def _without_endpoint(raw: _RawMap) -> set[str]:
    return {code for code, cfg in raw.regions.items() if cfg.processing_endpoint is None}
