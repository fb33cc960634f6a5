"""The drift check reports what it finds, whatever shape the answers take."""

from __future__ import annotations

from router.drift import CHECKS, DriftChecker
from router.testing import ResidencyWorld
from tests.stubs import Reply, stub_server


def malformed(method: str, path: str) -> Reply:
    if method == "POST":  # KMS: JSON without the fields the check reads
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, b"{}"
    if "policy" in path:
        return 200, {"Content-Type": "application/json"}, b'{"Policy": "[1, 2]"}'
    return 404, {}, b""


def test_malformed_answers_are_reported_per_check_never_raised(
    residency_world: ResidencyWorld,
) -> None:
    with stub_server(malformed) as stub:
        results = DriftChecker(residency_world.region_map, endpoint_url=stub.url).check()
    regions = {cfg.region.value for cfg in residency_world.region_map}
    assert {(r.region, r.check) for r in results} == {(g, c) for g in regions for c in CHECKS}
    assert all(not r.ok for r in results if r.check != "replication")
    assert all(r.detail for r in results if not r.ok)


def test_an_empty_encryption_configuration_is_reported_as_missing_encryption(
    residency_world: ResidencyWorld,
) -> None:
    def empty_encryption(method: str, path: str) -> Reply:
        if "encryption" in path:
            body = b"<ServerSideEncryptionConfiguration></ServerSideEncryptionConfiguration>"
            return 200, {"Content-Type": "application/xml"}, body
        return malformed(method, path)

    with stub_server(empty_encryption) as stub:
        results = DriftChecker(residency_world.region_map, endpoint_url=stub.url).check()
    encryption = [r for r in results if r.check == "encryption"]
    assert encryption
    assert all("no default encryption" in r.detail for r in encryption)
