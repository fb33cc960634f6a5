"""Local AWS for tests and the demo: moto's server on 127.0.0.1, in a thread or a child process.

:mod:`router.testing` builds its worlds and pytest plugin on these and re-exports the public
names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from moto.server import ThreadedMotoServer

from router._aws import Transport, boto3_client

DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


def _skip_keys_deleted_while_listing() -> None:
    """Work around a race in moto's server (S3 has none): keys deleted mid-listing are skipped.

    moto lists a bucket's keys from a copy of its key table, then reads each key; a key
    deleted by another request in between reads as None (ListObjectVersions) or raises
    (ListObjects: a key popped, or its versions emptied just before), and the listing
    answers 500 (``moto/s3/utils.py``, ``_VersionedKeyStore``; seen on a slow machine while
    one request listed and another deleted). A listing made a moment later would not have
    the key either, so it is skipped. Applied once per process, for good, by the servers
    here before they serve; ``tests/test_deps.py`` checks it still reaches moto.
    """
    from moto.s3.utils import _VersionedKeyStore

    if getattr(_VersionedKeyStore.iterlists, "_residency_skips_deleted", False):
        return
    original_lists = _VersionedKeyStore._iterlists
    missing = object()

    def iterlists(self: Any) -> Iterator[tuple[str, list[Any]]]:
        for key, versions in original_lists(self):
            if versions is not None:
                yield key, versions

    def iteritems(self: Any) -> Iterator[tuple[str, Any]]:
        for key in self._self_iterable():
            value = self.get(key, missing)  # moto's get: the default for a key popped or emptied
            if value is not missing:
                yield key, value

    def itervalues(self: Any) -> Iterator[Any]:
        for _, value in iteritems(self):
            yield value

    iterlists._residency_skips_deleted = True  # type: ignore[attr-defined]
    for names, method in (
        (("lists", "iterlists"), iterlists),
        (("items", "iteritems"), iteritems),
        (("values", "itervalues"), itervalues),
    ):
        for name in names:
            setattr(_VersionedKeyStore, name, method)


class _LazyPrivateKey:
    """Stands in for moto's per-key RSA private key until something signs with it."""

    def __init__(self, make: Callable[[str], Any], key_spec: str) -> None:
        self._make = make
        self._key_spec = key_spec
        self._key: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._key is None:
            self._key = self._make(self._key_spec)
        return getattr(self._key, name)


def _defer_symmetric_private_keys() -> None:
    # moto generates an RSA-2048 private key for every KMS key, symmetric ones included
    # (about 50 ms each); only sign/verify ever uses it, which symmetric keys never do.
    import moto.kms.models as kms_models

    make = kms_models.generate_private_key  # type: ignore[attr-defined]
    if getattr(make, "_residency_lazy", False):
        return

    def generate(key_spec: str) -> Any:
        if key_spec == "SYMMETRIC_DEFAULT":
            return _LazyPrivateKey(make, key_spec)
        return make(key_spec)

    generate._residency_lazy = True  # type: ignore[attr-defined]
    kms_models.generate_private_key = generate  # type: ignore[attr-defined]


class _MotoEndpoint:
    """What both local servers share: an endpoint URL, moto's reset, a ``with`` block."""

    endpoint_url: str

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every bucket, key and table (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalS3Server(_MotoEndpoint):
    """moto's threaded server on 127.0.0.1, on ``port`` (0: a free one), quiet by default."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        """Start the server and return its endpoint URL."""
        # werkzeug logs one line per request; the demo and tests want none of them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _defer_symmetric_private_keys()
        _skip_keys_deleted_while_listing()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        """Stop the server."""
        self._server.stop()


_CHANGES_PATH = "/_residency/configuration-changes"

# What a test may do to a session world that emptying undoes; every other write (bucket
# configuration, bucket creation or deletion, key state, aliases, policies) counts as a
# configuration change, and the world is provisioned again.
_KMS_DATA = frozenset(
    {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateRandom", "Sign", "Verify"}
)
_DYNAMODB_DATA = frozenset(
    {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "ExecuteStatement",
        "BatchExecuteStatement",
        "ExecuteTransaction",
        "CreateTable",
        "DeleteTable",
    }
)
_READ_PREFIXES = ("Describe", "List", "Get", "BatchGet", "TransactGet", "Query", "Scan")


def _service_of(environ: Mapping[str, Any]) -> str:
    credential = ""
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    if "Credential=" in authorization:
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    else:  # a presigned URL
        query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
        credential = query.get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    return parts[3] if len(parts) >= 5 else ""


def changes_configuration(environ: Mapping[str, Any]) -> bool:
    """Whether a request (a WSGI environ) may change what emptying a world does not undo.

    Reads, object and upload requests, DynamoDB items and tables, and KMS cryptography do
    not; anything else that writes, or whose service is unknown, does.
    """
    method = str(environ.get("REQUEST_METHOD", "GET"))
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    service = _service_of(environ)
    if service == "sts":
        return False
    if service == "s3":
        _, _, key = str(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        if key:
            return False  # an object, its tags, a multipart upload or one of its parts
        query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        # DeleteObjects, or a browser's form upload (POST without a query).
        return not (method == "POST" and set(query) <= {"delete", "x-id"})
    operation = str(environ.get("HTTP_X_AMZ_TARGET", "")).rpartition(".")[2]
    data = {"kms": _KMS_DATA, "dynamodb": _DYNAMODB_DATA}.get(service)
    if data is None:
        return True
    return not (operation in data or operation.startswith(_READ_PREFIXES))


class _ChangeCounter:
    """WSGI middleware: counts configuration changes and answers how many there were."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == _CHANGES_PATH:
            body = str(self._count).encode()
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]
        if changes_configuration(environ):
            with self._lock:
                self._count += 1
        return self._app(environ, start_response)


def serve_counting_moto() -> None:
    """Child process of ``LocalS3Process``: serve until the parent closes stdin."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    _defer_symmetric_private_keys()
    _skip_keys_deleted_while_listing()
    app = _ChangeCounter(DomainDispatcherApplication(create_backend_app))
    extra: dict[str, Any] = {}
    # moto's handler keeps S3 metadata names with underscores; older moto has none.
    with contextlib.suppress(ImportError):
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        extra["request_handler"] = MotoRequestHandler
    server = make_server("127.0.0.1", 0, app, threaded=True, **extra)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(server.server_port, flush=True)
    sys.stdin.read()
    server.shutdown()


class LocalS3Process(_MotoEndpoint):
    """A moto server on 127.0.0.1 in a child process, counting configuration changes.

    Its state is its own: ``LocalS3Server.reset`` in the test process leaves it alone. It
    stops when ``stop`` is called or the test process exits.
    """

    def __init__(self) -> None:
        self.endpoint_url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> str:
        """Start the child process and return its endpoint URL.

        Raises:
            RuntimeError: the server did not start.
        """
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        # The child imports this module from where this process found it.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
        with tempfile.TemporaryFile("w+") as errors:
            self._process = subprocess.Popen(
                [sys.executable, "-c", "import router.testing._moto as m; m.serve_counting_moto()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                text=True,
            )
            assert self._process.stdout is not None
            port = self._process.stdout.readline().strip()
            if not port.isdigit():
                self.stop()
                errors.seek(0)
                raise RuntimeError(f"the moto child process did not start: {errors.read()}")
        self.endpoint_url = f"http://127.0.0.1:{port}"
        return self.endpoint_url

    def configuration_changes(self) -> int:
        """How many requests so far may have changed configuration (``changes_configuration``)."""
        with urllib.request.urlopen(self.endpoint_url + _CHANGES_PATH, timeout=10) as response:
            return int(response.read())

    def stop(self) -> None:
        """Stop the child process."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# boto3 clients are slow to make and hold no state of a world: share them per endpoint.
_CLIENTS: dict[tuple[str, str, str], Any] = {}


def local_client(endpoint_url: str, service: str, aws_region: str) -> Any:
    """Return a boto3 client for a local endpoint with dummy credentials (cached).

    It comes from the project's one client factory, like every other client.
    """
    cache_key = (endpoint_url, service, aws_region)
    cached = _CLIENTS.get(cache_key)
    if cached is None:
        cached = boto3_client(
            service,
            aws_region,
            Transport(endpoint_url=endpoint_url, read_timeout_s=60.0),
            credentials=DUMMY_CREDENTIALS,
        )
        _CLIENTS[cache_key] = cached
    return cached


@contextlib.contextmanager
def isolated_aws_environment() -> Iterator[None]:
    """Hide the developer's AWS variables and files; use dummy credentials meanwhile."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    with tempfile.TemporaryDirectory() as empty:
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(Path(empty) / "config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(Path(empty) / "credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        try:
            yield
        finally:
            for name in [n for n in os.environ if n.startswith("AWS_")]:
                del os.environ[name]
            os.environ.update(saved)
