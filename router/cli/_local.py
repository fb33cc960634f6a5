"""``residency-router local`` (a local world in one command) and ``init`` (a map to start from)."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import FrameType

from router.cli._exit import EXIT_OK, EXIT_UNCHECKED, usage

TESTING_EXTRA = "pip install 'residency-router[testing]'"

# What 'local' exports besides the RESIDENCY_* settings: moto accepts any credentials, and
# these keep the developer's real ones out of every request to it.
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def example_map() -> Iterator[Path]:
    """The example region map shipped in the package, as a file path (from any directory)."""
    with resources.as_file(resources.files("router") / "data" / "regions.yaml") as path:
        yield path


@contextlib.contextmanager
def region_map_file(given: Path | None) -> Iterator[Path]:
    """``given``, or the packaged example map when it is None."""
    if given is not None:
        yield given
        return
    with example_map() as path:
        yield path


def _port_free(port: int) -> bool:
    if port == 0:
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _say(message: str) -> None:
    print(f"residency-router local: {message}", file=sys.stderr, flush=True)


def run_local(args: argparse.Namespace) -> int:
    """Start moto, provision the map, print the exports, and serve until SIGINT or SIGTERM."""
    if not 0 <= args.port <= 65535:
        return usage(f"--port must be between 0 and 65535, not {args.port}", as_json=False)
    if not _port_free(args.port):
        return usage(f"port {args.port} on 127.0.0.1 is in use; choose another", as_json=False)
    try:
        from router.testing import ResidencyWorld, isolated_aws_environment, local_s3_server
    except ImportError as exc:
        print(
            f"residency-router: local needs moto ({exc.name} is missing): {TESTING_EXTRA}",
            file=sys.stderr,
        )
        return EXIT_UNCHECKED
    from router.regions import RegionMap

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with (
            region_map_file(args.regions) as source,
            tempfile.TemporaryDirectory(prefix="residency-local-") as workdir,
        ):
            RegionMap.load(source)  # a bad map fails before the server starts
            # The map is copied: the exported path stays valid whatever happens to the source.
            copied = Path(workdir) / "regions.yaml"
            shutil.copyfile(source, copied)
            with isolated_aws_environment(), local_s3_server(args.port) as server:
                _say(f"moto S3/KMS/DynamoDB server on {server.endpoint_url} (loopback only)")
                world = ResidencyWorld.provision(server.endpoint_url, copied, workdir)
                world.create_directory_table(args.table)
                _say(
                    f"provisioned {len(world.region_map.regions)} regions ("
                    + ", ".join(f"{c.region.value}={c.aws_region}" for c in world.region_map)
                    + f") and directory table {args.table} with "
                    f"{len(world.region_map.orgs)} orgs"
                )
                exports = {
                    "RESIDENCY_ENDPOINT_URL": server.endpoint_url,
                    "RESIDENCY_REGIONS_FILE": str(world.regions_file),
                    "RESIDENCY_DIRECTORY_TABLE": args.table,
                    **DUMMY_AWS,
                }
                for name, value in exports.items():
                    print(f"export {name}={shlex.quote(value)}")
                sys.stdout.flush()
                _say(
                    "ready; bucket policies are not attached (moto ignores their conditions): "
                    "use 'residency-router check --skip policy'. Ctrl-C stops."
                )
                while not stop.wait(0.5):
                    pass
                _say("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


INIT_TEMPLATE = """\
# The region map: one S3 bucket and one KMS key per residency region.
# The router validates it at start-up (any problem stops it) and never guesses:
#   residency-router verify --regions regions.yaml   checks it against AWS
#   residency-router local --regions regions.yaml    serves it on a local moto server
#
# Residency regions are fixed: us, eu, jp, ca, kr, sg, in. Each one's aws_region must be
# inside it (eu: eu-west-1, eu-west-3, eu-central-1, eu-north-1, eu-south-1, eu-south-2;
# us: us-east-1, us-east-2, us-west-1, us-west-2; jp: ap-northeast-1, ap-northeast-3; ...).
regions:
  us:
    aws_region: us-east-1
    bucket: my-company-residency-us       # S3 bucket names are global: make them yours
    # A key or alias ARN in the same AWS region; aliases are resolved once at start-up.
    kms_key: arn:aws:kms:us-east-1:123456789012:alias/residency-us
    processing_endpoint: https://us.example.invalid   # optional: where 'us' processing goes
  eu:
    aws_region: eu-west-1
    bucket: my-company-residency-eu
    kms_key: arn:aws:kms:eu-west-1:123456789012:alias/residency-eu
    processing_endpoint: https://eu.example.invalid
  # jp:
  #   aws_region: ap-northeast-1
  #   bucket: my-company-residency-jp
  #   kms_key: arn:aws:kms:ap-northeast-1:123456789012:alias/residency-jp

processing:
  default_region: us              # where unpinned orgs' processing goes (needs an endpoint)
  endpoints:                      # exact paths; anything not listed is refused for every org
    /v1/chat/completions: {regional: true}                        # processed in the org's pin
    /v1/audio/transcriptions: {regional: true, retains_data: false}  # never stored
    /v1/fine_tuning/jobs: {regional: false}                       # default region only

retention:
  inputs_outputs_days: 30         # how long recorded inputs/outputs are kept by default
  allowed_days: [1, 7, 30]        # every org's retention_days must be one of these

# The static org directory. With RESIDENCY_DIRECTORY_TABLE set, orgs live in DynamoDB
# instead ('residency-router orgs set/move' change them) and this section is ignored.
orgs:
  org-example-us: {region: us}
  org-example-eu: {region: eu, processing_region: eu, retention_days: 7}
  # org-private: {region: eu, zero_data_retention: true}   # nothing recorded, ever
"""


def run_init(args: argparse.Namespace) -> int:
    """Write the commented starting map to ``args.path``; never overwrite without --force."""
    path: Path = args.path
    if path.exists() and not args.force:
        return usage(f"{path} exists; add --force to overwrite it", as_json=False)
    try:
        path.write_text(INIT_TEMPLATE, encoding="utf-8")
    except OSError as exc:
        return usage(f"cannot write {path}: {exc.strerror}", as_json=False)
    print(f"wrote {path}: edit the buckets and key ARNs, then 'residency-router verify'")
    return EXIT_OK
