"""The ResidencyError tree: every error the router raises on purpose.

::

    ResidencyError                        root; nothing else escapes the router on purpose
    ├── ConfigError (ValueError)          regions.yaml or settings problem
    ├── InvalidArgumentError (ValueError) bad caller input; nothing was sent
    │   └── InvalidKeyError               bad org id or object key; nothing was sent
    ├── UnknownOrgError                   org not in the directory; nothing was sent
    ├── DirectoryUnavailableError         directory failed or returned a bad record (retryable)
    ├── ObjectNotFoundError
    ├── ProcessingNotEligibleError        endpoint not processable for this org
    ├── OrgMovingError                    the org's writes are fenced while it moves (retryable)
    ├── OrgRecordConflictError            another change to the record came first (retryable)
    ├── ResidencyViolationError           redirect, foreign region or key, owner mismatch
    ├── StorageError                      S3/KMS refused for good; carries the AWS code
    └── RegionUnavailableError            failed after retries (retryable, same region only)

Wrong Python types raise :class:`TypeError`; using a closed router raises ``RuntimeError``.
"""

from __future__ import annotations

from typing import ClassVar


class ResidencyError(Exception):
    """Root of every error this package raises on purpose.

    ``aws_code`` and ``request_id`` name what AWS answered, when it answered: they replace
    the botocore exception, which is not chained (its message and traceback can carry the
    request URL, and with it a plain object key).
    """

    retryable: ClassVar[bool] = False
    aws_code: str | None = None
    request_id: str | None = None


class ConfigError(ResidencyError, ValueError):
    """Fix regions.yaml or the settings: the message lists every problem with its field path."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        count = len(self.problems)
        head = "invalid residency configuration" + (f" ({count} problems)" if count > 1 else "")
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class InvalidArgumentError(ResidencyError, ValueError):
    """Fix the argument the message names (metadata, content type, ...); nothing was sent."""


class InvalidKeyError(InvalidArgumentError):
    """Fix the org id or object key named in the message; nothing was sent."""


class UnknownOrgError(ResidencyError):
    """Add the org to the directory first; nothing was sent."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        super().__init__(f"org {org_id!r} is not in the org directory; nothing was sent")


class DirectoryUnavailableError(ResidencyError):
    """Retry later: the org directory backend failed or timed out; nothing was sent."""

    retryable = True


class ObjectNotFoundError(ResidencyError):
    """Check the key: no such object for this org in its region."""


class ProcessingNotEligibleError(ResidencyError):
    """Do not send this call: the endpoint cannot be processed for this org."""


class OrgMovingError(ResidencyError):
    """Retry later: the org is moving between regions and its writes are fenced meanwhile.

    Reads keep working. The fence lasts from the move's fence instant to its switch; a retry
    after the switch writes to the new region.
    """

    retryable = True


class OrgRecordConflictError(ResidencyError):
    """Re-read the org record and retry: another change to it came first.

    Either another writer wrote the next version, or a change is still scheduled and must
    take effect before the next one is written.
    """

    retryable = True


class ResidencyViolationError(ResidencyError):
    """Do not retry anywhere: policy forbids this operation in the region."""

    region_wide: bool = False
    """True when the region itself answered unsafely (a redirect, another region's bucket)."""


class StorageError(ResidencyError):
    """Fix permissions or configuration: S3 or KMS refused for good (see ``code``)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        self.code = code
        super().__init__(f"{message} ({code})" if code else message)


class RegionUnavailableError(ResidencyError):
    """Retry later, in the same region only: it failed after retries."""

    retryable = True


def first_error(exc: BaseException) -> BaseException:
    """Return the error a caller should see from a (possibly nested) exception group.

    Residency violations win over other residency errors, which win over anything else.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop(0)
        if isinstance(item, BaseExceptionGroup):
            stack[:0] = list(item.exceptions)
        else:
            leaves.append(item)
    for preferred in (ResidencyViolationError, ResidencyError, Exception):
        for leaf in leaves:
            if isinstance(leaf, preferred):
                return leaf
    return leaves[0]
