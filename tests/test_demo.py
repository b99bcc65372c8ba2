"""The demo app's handlers: each collection's list and items, a 404 never stored, a HIT replayed."""

from __future__ import annotations

import httpx
import pytest

from cache_middleware.demo.app import EVENTS, VENUES, create_app


@pytest.mark.parametrize(
    ("plural", "singular", "items"), [("events", "event", EVENTS), ("venues", "venue", VENUES)]
)
async def test_a_collection_lists_its_items_and_finds_one_by_id(
    plural: str, singular: str, items: tuple[dict[str, object], ...]
) -> None:
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        listed = await client.get(f"/api/{plural}")
        assert listed.status_code == 200
        assert listed.json()[plural] == list(items)

        first = items[0]
        found = await client.get(f"/api/{plural}/{first['id']}")
        assert found.status_code == 200
        assert found.headers["x-cache"] == "MISS"
        again = await client.get(f"/api/{plural}/{first['id']}")
        assert again.headers["x-cache"] == "HIT"
        assert again.json() == found.json()  # generated_at included: the entry was replayed
        assert found.json()[singular] == first

        for _ in range(2):
            missing = await client.get(f"/api/{plural}/nope")
            assert missing.status_code == 404
            assert missing.json()["error"] == f"{singular} not found"
            assert missing.headers["x-cache"] != "HIT"
