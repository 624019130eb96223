import httpx

from tests.factories import API, make_account, make_item


async def test_health_and_items_round_trip(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/health/ready")).status_code == 200
    account = await make_account(client)
    item = await make_item(client, account)
    got = await client.get(f"{API}/items/{item['id']}", headers=account.headers)
    assert got.json() == item
