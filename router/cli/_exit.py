"""Exit statuses and error reports shared by every command (light imports only)."""

from __future__ import annotations

import json
import sys

from pydantic import ValidationError

from router.errors import ResidencyError, ResidencyViolationError

EXIT_OK, EXIT_FOUND, EXIT_UNCHECKED = 0, 1, 2
"""0 fine; 1 a violation or drift found; 2 usage error, or could not check."""


def exit_code_for(exc: BaseException) -> int:
    """1 for a residency violation (something was found); 2 for everything else.

    A bad map or setting, an unknown org, a refused or unreachable AWS: the command could
    not do its work, which proves nothing either way.
    """
    return EXIT_FOUND if isinstance(exc, ResidencyViolationError) else EXIT_UNCHECKED


def describe(exc: BaseException) -> str:
    """``Type: message`` (router errors and settings errors never repeat secrets)."""
    return f"{type(exc).__name__}: {exc}"


def report_error(exc: BaseException, *, as_json: bool, status: int | None = None) -> int:
    """Say what went wrong on stderr (and as the JSON document on stdout); return the status."""
    code = exit_code_for(exc) if status is None else status
    print(f"residency-router: {describe(exc)}", file=sys.stderr)
    if as_json:
        print(json.dumps(error_document(exc, code), indent=2))
    return code


def error_document(exc: BaseException, status: int) -> dict[str, object]:
    """The JSON document of a failed command."""
    kind = (
        "settings"
        if isinstance(exc, ValidationError)
        else "residency"
        if isinstance(exc, ResidencyError)
        else "other"
    )
    return {
        "ok": False,
        "exit_code": status,
        "error": {"type": type(exc).__name__, "kind": kind, "message": str(exc)},
    }


def could_not_check(reason: str, *, as_json: bool) -> int:
    """Nothing could be checked (credentials, endpoint): exit 2, saying why."""
    print(f"residency-router: could not check: {reason}", file=sys.stderr)
    if as_json:
        document = {
            "ok": False,
            "exit_code": EXIT_UNCHECKED,
            "error": {"type": "CouldNotCheck", "kind": "unchecked", "message": reason},
        }
        print(json.dumps(document, indent=2))
    return EXIT_UNCHECKED


def usage(message: str, *, as_json: bool) -> int:
    """A usage error the parser could not catch: exit 2 with ``message``."""
    print(f"residency-router: {message}", file=sys.stderr)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": False,
                    "exit_code": EXIT_UNCHECKED,
                    "error": {"type": "UsageError", "kind": "usage", "message": message},
                },
                indent=2,
            )
        )
    return EXIT_UNCHECKED
