"""Structured audit events on the ``router.audit`` logger; object keys only as keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Literal

AUDIT_LOGGER = "router.audit"

# A library must not print through logging's last-resort handler: the embedding
# service decides where audit events go.
logging.getLogger(AUDIT_LOGGER).addHandler(logging.NullHandler())

Outcome = Literal["ok", "skipped", "refused", "error"]


class AuditLog:
    """Emits one structured event per routing decision or storage operation.

    Events carry ids and outcomes, never object contents; an object key appears only as an
    HMAC-SHA256 under ``secret`` so it cannot be recovered by guessing keys. Without a
    configured secret a random per-process one is used: hashes are then comparable only
    within one process.
    """

    __slots__ = ("_logger", "_secret")

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)
        self._logger = logging.getLogger(AUDIT_LOGGER)

    def key_hash(self, key: str) -> str:
        """Return the keyed hash of an object key (hex, 32 characters)."""
        digest = hmac.new(self._secret, key.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def enabled(self, error: bool = False) -> bool:
        """Return True when an event of that kind would be logged (skip building it if not)."""
        return self._logger.isEnabledFor(logging.WARNING if error else logging.INFO)

    def emit(
        self,
        operation: str,
        *,
        org_id: str,
        outcome: Outcome,
        region: str | None = None,
        data_class: str | None = None,
        key: str | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        """Log one audit event at INFO (errors and refusals at WARNING)."""
        level = logging.INFO if outcome in ("ok", "skipped") else logging.WARNING
        if not self._logger.isEnabledFor(level):
            return
        event: dict[str, object] = {
            "event": "residency." + operation,
            "org_id": org_id,
            "region": region,
            "operation": operation,
            "data_class": data_class,
            "outcome": outcome,
        }
        if key is not None:
            event["key_hash"] = self.key_hash(key)
        if latency_ms is not None:
            event["latency_ms"] = round(latency_ms, 3)
        if error is not None:
            event["error"] = error
        self._logger.log(
            level, "%s org=%s outcome=%s", event["event"], org_id, outcome, extra={"audit": event}
        )
