"""Pure residency guards, table-driven: which AWS answers are violations."""

from __future__ import annotations

from typing import Any

import pytest

from router.guards import (
    bucket_region,
    encryption_problem,
    key_region_problem,
    key_state_problem,
    location_problem,
    response_violation,
    s3_head_probe,
)

KEY = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"


def answer(code: str | None = None, bucket_region: str | None = None, **error: str) -> Any:
    headers = {"x-amz-bucket-region": bucket_region} if bucket_region else {}
    parsed: dict[str, Any] = {"ResponseMetadata": {"HTTPHeaders": headers}}
    if code is not None:
        parsed["Error"] = {"Code": code, **error}
    return parsed


@pytest.mark.parametrize(
    ("status", "parsed", "is_s3", "found"),
    [
        pytest.param(200, answer(), True, None, id="plain-success"),
        pytest.param(200, answer(bucket_region="eu-west-1"), True, None, id="own-region"),
        pytest.param(200, answer(bucket_region="us-west-2"), True, "us-west-2", id="foreign-200"),
        pytest.param(301, answer("PermanentRedirect"), True, "PermanentRedirect", id="301"),
        pytest.param(307, answer(), True, "a redirect", id="307-no-body"),
        pytest.param(307, answer(), False, "a redirect", id="307-dynamodb"),
        pytest.param(302, answer("302"), False, "a redirect", id="302-kms"),
        pytest.param(400, answer("TemporaryRedirect"), True, "TemporaryRedirect", id="code"),
        pytest.param(
            400,
            answer("AuthorizationHeaderMalformed", Region="us-east-1"),
            True,
            "S3 expects us-east-1",
            id="signing-region",
        ),
        pytest.param(
            400,
            answer("IllegalLocationConstraintException"),
            True,
            "IllegalLocationConstraint",
            id="location-constraint",
        ),
        pytest.param(403, answer("AccessDenied"), True, None, id="access-denied-not-a-redirect"),
        pytest.param(404, answer("NoSuchKey"), True, None, id="missing-key"),
        pytest.param(400, answer("ValidationException"), False, None, id="dynamodb-400"),
        pytest.param(
            200, answer(bucket_region="us-west-2"), False, None, id="header-ignored-off-s3"
        ),
    ],
)
def test_response_violation(status: int, parsed: Any, is_s3: bool, found: str | None) -> None:
    problem = response_violation(status, parsed, "eu-west-1", is_s3=is_s3)
    if found is None:
        assert problem is None
    else:
        assert problem is not None
        assert found in problem


@pytest.mark.parametrize(
    ("response", "found"),
    [
        pytest.param({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY}, None, id="ok"),
        pytest.param({"ServerSideEncryption": "AES256"}, "not SSE-KMS", id="sse-s3"),
        pytest.param({}, "found none", id="unencrypted"),
        pytest.param(
            {
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": KEY.replace("eu-west-1", "us-east-1"),
            },
            "other than the region's",
            id="foreign-key",
        ),
        pytest.param(
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY.split("/")[-1]},
            "other than the region's",
            id="bare-key-id",
        ),
    ],
)
def test_encryption_problem(response: dict[str, str], found: str | None) -> None:
    problem = encryption_problem(response, KEY)
    assert (problem is None) if found is None else (problem is not None and found in problem)


@pytest.mark.parametrize(
    ("constraint", "region", "expected"),
    [
        pytest.param(None, "us-east-1", "us-east-1", id="legacy-none"),
        pytest.param("", "us-east-1", "us-east-1", id="legacy-empty"),
        pytest.param("EU", "eu-west-1", "eu-west-1", id="legacy-eu"),
        pytest.param("ap-south-1", "ap-south-1", "ap-south-1", id="named"),
    ],
)
def test_bucket_region_reads_legacy_location_constraints(
    constraint: str | None, region: str, expected: str
) -> None:
    assert bucket_region(constraint) == expected
    assert location_problem(constraint, region) is None
    assert location_problem(constraint, "ca-central-1") == f"is in {expected}, not ca-central-1"


@pytest.mark.parametrize(
    ("meta", "account", "found"),
    [
        pytest.param({"Arn": KEY}, None, None, id="ok"),
        pytest.param({"Arn": KEY}, "123456789012", None, id="own-account"),
        pytest.param({"Arn": KEY}, "999999999999", "account 123456789012", id="other-account"),
        pytest.param({"Arn": KEY, "MultiRegion": True}, None, "multi-region", id="multi"),
        pytest.param(
            {"Arn": KEY.replace("eu-west-1", "eu-central-1")},
            None,
            "key is in eu-central-1",
            id="other-region",
        ),
        pytest.param({"Arn": "nonsense"}, None, "unknown region", id="unparsable"),
    ],
)
def test_key_region_problem(meta: dict[str, Any], account: str | None, found: str | None) -> None:
    problem = key_region_problem(meta, "eu-west-1", account)
    assert (problem is None) if found is None else (problem is not None and found in problem)


def test_key_state_and_head_probe() -> None:
    assert key_state_problem({"KeyState": "Enabled"}) is None
    assert key_state_problem({"KeyState": "Disabled"}) == "key state is Disabled"
    assert key_state_problem({"KeyState": "PendingDeletion"}) == "key state is PendingDeletion"
    assert s3_head_probe(400, "HeadObject")
    assert s3_head_probe(400, "HeadBucket")
    assert not s3_head_probe(400, "GetObject")
    assert not s3_head_probe(404, "HeadObject")
