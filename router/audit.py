"""Structured audit events on the ``router.audit`` logger; object keys only as keyed hashes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Literal

try:  # the `otel` extra: spans only when OpenTelemetry is installed and configured
    from opentelemetry import trace as _trace
    from opentelemetry.trace import ProxyTracerProvider, Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra
    _trace = None  # type: ignore[assignment]

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
        tracer = _tracer()
        if tracer is None and not self._logger.isEnabledFor(level):
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
        if tracer is not None:
            _record_span(tracer, event, latency_ms)
        if not self._logger.isEnabledFor(level):
            return
        self._logger.log(
            level, "%s org=%s outcome=%s", event["event"], org_id, outcome, extra={"audit": event}
        )


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
        tracer = _TRACERS[id(provider)] = provider.get_tracer("router")
    return tracer


def _load_tracer_provider() -> None:
    """Let OpenTelemetry load a provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` (at start)."""
    if _trace is not None:
        _trace.get_tracer_provider()


def _record_span(tracer: Any, event: dict[str, object], latency_ms: float | None) -> None:
    # One span per audit event, back-dated by its latency: the span carries the same ids
    # and outcome as the event, and never content or a plain key.
    end = time.time_ns()
    start = end - int((latency_ms or 0.0) * 1_000_000)
    attributes = {
        f"residency.{name}": value
        for name, value in event.items()
        if value is not None and name != "event" and isinstance(value, str | int | float)
    }
    span = tracer.start_span(str(event["event"]), start_time=start, attributes=attributes)
    if event.get("outcome") == "error":
        span.set_status(Status(StatusCode.ERROR, str(event.get("error", ""))))
    span.end(end_time=end)
