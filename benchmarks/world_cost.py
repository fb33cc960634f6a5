"""Per-test cost of the plugin's worlds: the session world against the per-test world.

``python -m benchmarks.world_cost [N]`` writes a throwaway project with N trivial tests per
fixture (each puts one object, through the router or boto3), runs each fixture's tests in
a pytest process of its own and prints their set-up seconds per test: the mean and median
over the tests after the first, and the first on its own (it pays for the moto server and
the session world's one provisioning). Set-up is where the world is made, so it is the
figure compared; the router fixtures' set-up includes starting the router, which verifies
every region.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = (
    "residency_session_world",
    "residency_world",
    "residency_session_router",
    "residency_router",
)

ROUTER_TEST = """
import pytest

@pytest.mark.parametrize("n", range({count}))
async def test_{fixture}(n, {fixture}):
    await {fixture}.put("org-acme", f"doc-{{n}}.txt", b"x")
"""

WORLD_TEST = """
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_{fixture}(n, {fixture}):
    {fixture}.s3("eu").put_object(Bucket={fixture}.bucket("eu"), Key=f"doc-{{n}}", Body=b"x")
"""


def run(fixture: str, count: int) -> list[float]:
    """Set-up seconds of each of ``count`` tests using ``fixture``, in a pytest of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "regions.yaml", project / "regions.yaml")
        (project / "conftest.py").write_text('pytest_plugins = ["router.testing"]\n')
        (project / "pytest.ini").write_text(
            "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        )
        test = ROUTER_TEST if fixture.endswith("router") else WORLD_TEST
        (project / "test_world.py").write_text(test.format(count=count, fixture=fixture))
        options = ["-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts="]
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *options, "--durations=0", "--durations-min=0"],
            cwd=project,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    # Lines read "1.23s setup    test_world.py::test_x[0]"; --durations lists slowest first.
    found = re.findall(r"([\d.]+)s setup\s+test_world\.py::\w+\[(\d+)\]", out)
    return [seconds for _, seconds in sorted((int(n), float(s)) for s, n in found)]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(f"set-up seconds per test, {count} tests each (first test, then the others)")
    for fixture in FIXTURES:
        seconds = run(fixture, count)
        rest = seconds[1:]
        print(
            f"{fixture:26} first {seconds[0]:6.2f}   "
            f"mean {statistics.mean(rest):5.2f}   median {statistics.median(rest):5.2f}"
        )


if __name__ == "__main__":
    main()
