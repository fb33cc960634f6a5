"""Dependency declarations: ranges, the oldest set CI tests, and a lean ``testing`` extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from router.testing import LocalS3Server

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
OLDEST = ROOT / ".ci" / "oldest.txt"

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[(?P<extras>[^\]]*)\])?(?P<spec>.*)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: list[str]) -> dict[str, tuple[set[str], str]]:
    found: dict[str, list[tuple[set[str], str]]] = {}
    for line in lines:
        match = _REQUIREMENT.match(line.replace(" ", ""))
        assert match, line
        extras = {e for e in (match["extras"] or "").split(",") if e}
        found.setdefault(_normalize(match["name"]), []).append((extras, match["spec"]))
    return {
        name: (set().union(*(extras for extras, _ in each)), ",".join(spec for _, spec in each))
        for name, each in found.items()
    }


def oldest_pins() -> dict[str, str]:
    pins = {}
    for line in OLDEST.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalize(name)] = version
    return pins


def test_runtime_dependencies_are_ranges_not_pins() -> None:
    for name, (_, spec) in requirements(PROJECT["dependencies"]).items():
        assert "==" not in spec, f"{name} is pinned: {spec}"
        assert ">=" in spec, f"{name} needs a floor: {spec}"
        assert "<" in spec, f"{name} needs a ceiling: {spec}"


def test_aiobotocore_range_reaches_from_aioboto3s_to_the_newest_3x() -> None:
    _, spec = requirements(PROJECT["dependencies"])["aiobotocore"]
    assert set(spec.split(",")) == {">=2.25.0", "<4"}


def test_oldest_constraints_pin_each_declared_floor() -> None:
    # .ci/run tests the floor of each range; a floor raised in pyproject.toml without the
    # constraints file (or the other way round) would test a set nobody declared.
    declared = requirements(PROJECT["dependencies"]) | requirements(
        PROJECT["optional-dependencies"]["testing"]
    )
    pins = oldest_pins()
    for name in ("aiobotocore", "botocore", "boto3", "aiohttp", "pydantic", "moto"):
        assert name in pins, name
    for name, version in pins.items():
        if name not in declared:
            continue
        floors = [part[2:] for part in declared[name][1].split(",") if part.startswith(">=")]
        assert floors, f"{name}: no floor declared"
        assert Version(version) == Version(floors[0]), f"{name}: pins {version}, floor {floors[0]}"


def test_testing_extra_installs_moto_without_server_or_cloudformation_extras() -> None:
    # moto's "server" and "cloudformation" extras pull in cfn-lint, sympy, networkx, docker:
    # the plugin needs S3, KMS and DynamoDB, and flask for ThreadedMotoServer.
    testing = requirements(PROJECT["optional-dependencies"]["testing"])
    extras, _ = testing["moto"]
    assert extras <= {"s3", "kms", "dynamodb"}, extras
    assert {"flask", "flask-cors"} <= testing.keys()
    dev = requirements(PROJECT["optional-dependencies"]["dev"])
    assert "cloudformation" in dev["moto"][0], "tests/test_infra.py needs moto's CloudFormation"


def test_the_plugin_does_not_use_cloudformation() -> None:
    sources = sorted((ROOT / "router" / "testing").glob("*.py"))
    assert len(sources) >= 2  # the package's modules, not an empty glob
    for source in sources:
        assert "cloudformation" not in source.read_text(encoding="utf-8").lower(), source.name


# -- internals the lean transport (router/_s3/lean.py, sigv4.py, router/_aws.py) relies on -


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"<Error><Code>InternalError</Code></Error>", 500, id="error-body"),
        pytest.param(b"<Error><Code>Internal", 500, id="cut-short"),
        pytest.param(b"", 200, id="empty"),
        pytest.param(b"<PutObjectResult/>", 200, id="not-an-error"),
    ],
)
def test_botocores_200_error_rule_still_exists_and_turns_errors_into_500s(
    body: bytes, status: int
) -> None:
    # The lean transport asks this botocore internal (registered on before-parse.s3.*)
    # whether a 200 answer is an error in disguise: if it moves or stops marking them, this
    # fails here rather than a refused put being taken for a write.
    import botocore.session

    from router._s3 import lean

    model = botocore.session.get_session().get_service_model("s3").operation_model("PutObject")
    answer = {"status_code": 200, "body": body, "headers": {}}
    lean._HANDLE_200_ERROR(model, answer)
    assert answer["status_code"] == status


@pytest.mark.parametrize(
    ("url", "host"),
    [
        pytest.param("https://b.s3.eu-west-1.amazonaws.com/k", "b.s3.eu-west-1.amazonaws.com"),
        pytest.param("https://b.s3.eu-west-1.amazonaws.com:443/k", "b.s3.eu-west-1.amazonaws.com"),
        pytest.param("http://127.0.0.1:80/b/k", "127.0.0.1", id="http-default-port"),
        pytest.param("http://127.0.0.1:9000/b/k", "127.0.0.1:9000", id="http-other-port"),
        pytest.param("https://127.0.0.1:80/b/k", "127.0.0.1:80", id="https-port-80"),
        pytest.param("http://LOCALHOST:9000/b", "localhost:9000", id="lowercased"),
        pytest.param("http://[::1]:9000/b/k", "[::1]:9000", id="ipv6"),
    ],
)
def test_botocores_host_rule_still_exists_and_drops_default_ports(url: str, host: str) -> None:
    # The lean signer takes the signed host from this botocore internal, as botocore's own
    # signer does when a request has no Host header: if an upgrade moves or changes it,
    # this fails here rather than every lean request being refused by S3.
    from botocore import auth as botocore_auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from router._s3 import sigv4

    assert sigv4.HOST_FROM_URL is botocore_auth._host_from_url  # type: ignore[attr-defined]
    assert botocore_auth._host_from_url(url) == host  # type: ignore[attr-defined]
    signer = botocore_auth.S3SigV4Auth(Credentials("a", "b"), "s3", "eu-west-1")
    assert signer.headers_to_sign(AWSRequest("GET", url))["host"] == host


async def test_lean_session_turns_off_aiohttps_silent_resend_and_aiohttp_consults_it() -> None:
    # aiohttp re-sends an idempotent request once when the server hangs up, unless the
    # private ClientSession._retry_connection is False (no public option exists). The lean
    # session sets it so the retry budget counts the requests actually sent; this fails if
    # the switch is renamed or no longer read.
    import asyncio

    import aiohttp
    from yarl import URL

    from router._aws import Transport, open_lean_http

    arrived = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await reader.readuntil(b"\r\n\r\n")
        arrived += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/bucket/key"
    async with server:
        http = await open_lean_http(Transport(endpoint_url=f"http://127.0.0.1:{port}"), None)
        try:
            assert http._session._retry_connection is False
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await http.request("GET", URL(url), headers={}, data=None)
        finally:
            await http.aclose()
        assert arrived == 1
        arrived = 0
        async with aiohttp.ClientSession() as default:  # the switch left on: one re-send
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await default.get(url)
        assert arrived == 2


def test_the_moto_listing_workaround_still_reaches_moto(
    residency_s3_server: LocalS3Server,
) -> None:
    # router.testing's servers patch moto's versioned key store so that a key deleted while
    # a listing runs is skipped instead of answering 500. If moto renames what is patched,
    # this fails rather than the soak failing now and then. The session's in-process server
    # has started (the fixture), so the patch is in place, applied once however often asked.
    from moto.s3.utils import _VersionedKeyStore

    from router.testing._moto import _skip_keys_deleted_while_listing

    assert getattr(_VersionedKeyStore.iterlists, "_residency_skips_deleted", False)
    patched = (_VersionedKeyStore.lists, _VersionedKeyStore.items, _VersionedKeyStore.values)
    _skip_keys_deleted_while_listing()
    assert (_VersionedKeyStore.lists, _VersionedKeyStore.items, _VersionedKeyStore.values) == (
        patched
    )

    store = _VersionedKeyStore()
    for key in ("kept", "deleted", "emptied"):
        store[key] = "v1"
    copy = dict(store)
    # By other requests, after the listing copied the key table: one key deleted, and one
    # mid-delete (moto empties a key's versions before it pops the key).
    del store["deleted"]
    dict.__setitem__(store, "emptied", [])
    store._self_iterable = lambda: copy  # type: ignore[method-assign]
    assert list(store.iterlists()) == [("kept", ["v1"]), ("emptied", [])]
    assert list(store.lists()) == [("kept", ["v1"]), ("emptied", [])]
    assert list(store.items()) == [("kept", "v1")]
    assert list(store.iteritems()) == [("kept", "v1")]
    assert list(store.values()) == ["v1"]
