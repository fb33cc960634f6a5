"""Answers that lack a field the router reads are unreadable answers, never a bare KeyError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router._answers import _NEEDED, missing_field
from router.errors import RegionUnavailableError
from router.routing import ResidencyRouter
from tests.conftest import unverified
from tests.stubs import Reply, stub_server

MiB = 1024 * 1024


def complete(shape_name: str) -> dict[str, Any]:
    """A successful answer of ``shape_name`` with every field the router reads, two items a list."""
    parsed: dict[str, Any] = {}
    for where, fields in _NEEDED[shape_name]:
        if not where:
            parsed.update({name: "x" for name in fields if name not in parsed})
        elif where == "CopyPartResult":
            parsed[where] = {name: "x" for name in fields}
        else:
            parsed[where] = [{name: "x" for name in fields} for _ in range(2)]
    return parsed


@pytest.mark.parametrize("shape_name", sorted(_NEEDED))
def test_each_field_the_router_reads_is_required_of_a_successful_answer(shape_name: str) -> None:
    assert missing_field(shape_name, complete(shape_name)) == ""
    for where, fields in _NEEDED[shape_name]:
        for name in fields:
            answer = complete(shape_name)
            if not where:
                del answer[name]
            elif isinstance(answer[where], dict):
                del answer[where][name]
            else:
                del answer[where][1][name]  # the second item: every item is checked
            assert missing_field(shape_name, answer) == name
    # Lists may be empty or absent: a listing of nothing is complete.
    assert missing_field("ListObjectsV2Output", {"IsTruncated": False}) == ""
    assert missing_field("PutObjectOutput", {}) == ""  # not an answer the table names


def xml_reply(body: str) -> Reply:
    return 200, {"Content-Type": "application/xml"}, body.encode()


async def test_a_listing_item_without_its_key_is_an_unreadable_answer(key_arn_map: Path) -> None:
    def answer(method: str, path: str) -> Reply:
        return xml_reply(
            "<ListBucketResult><IsTruncated>false</IsTruncated><Contents>"
            "<Size>1</Size><LastModified>2026-12-01T00:00:00.000Z</LastModified>"
            "</Contents></ListBucketResult>"
        )

    with stub_server(answer) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=1)
        ) as router:
            with pytest.raises(RegionUnavailableError, match=r"could not be read \(no Key\)"):
                _ = [found async for found in router.list("org-acme")]
    assert any("list-type=2" in path for _, path in stub.requests)


async def test_a_multipart_upload_started_without_an_id_is_an_unreadable_answer(
    key_arn_map: Path,
) -> None:
    def answer(method: str, path: str) -> Reply:
        if method == "POST" and path.endswith("?uploads"):  # CreateMultipartUpload
            return xml_reply(
                "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                "</InitiateMultipartUploadResult>"
            )
        return 500, {}, b""

    with stub_server(answer) as stub:
        settings = unverified(
            key_arn_map,
            stub.url,
            retry_max_attempts=1,
            multipart_threshold=5 * MiB,
            multipart_part_size=5 * MiB,
        )
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(RegionUnavailableError, match=r"could not be read \(no UploadId\)"):
                await router.put("org-acme", "big.bin", b"x" * (6 * MiB))
    # Nothing was sent after the answer that could not be read.
    assert [method for method, _ in stub.requests] == ["POST"]
