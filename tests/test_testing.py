"""The test kit a user's own tests rely on: its assertions fail clearly."""

from __future__ import annotations

import pytest

from router.routing import ResidencyRouter
from router.testing import ResidencyWorld


async def test_assert_stored_in_says_where_the_key_actually_is(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    await residency_router.put("org-acme", "doc.txt", b"x")
    residency_world.assert_stored_in("org-acme", "doc.txt", "eu")
    with pytest.raises(AssertionError, match=r"not in us .*it is in: eu") as info:
        residency_world.assert_stored_in("org-acme", "doc.txt", "us")
    assert "ClientError" not in str(info.value)
    with pytest.raises(AssertionError, match="no region at all"):
        residency_world.assert_stored_in("org-acme", "missing.txt", "eu")


def test_kit_helpers_hide_their_own_frames() -> None:
    assert ResidencyWorld.assert_stored_in.__code__.co_varnames[0] == "self"
    for helper in (ResidencyWorld.assert_stored_in, ResidencyWorld.assert_nothing_outside):
        assert "__tracebackhide__" in helper.__code__.co_varnames
