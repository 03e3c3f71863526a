"""The OpenAPI description documents every route's errors with their stable codes."""

from __future__ import annotations

from services.common.client import ExchangeClient


async def test_every_route_documents_its_error_responses(admin: ExchangeClient) -> None:
    spec = (await admin.http.get("/openapi.json")).json()
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 19
    for path, method, op in operations:
        tag = op["tags"][0]
        expected = {"public": {"400", "404", "503"},
                    "trading": {"400", "401", "404", "409", "413", "429", "503"},
                    "operator": {"400", "401", "404", "413", "503"}}[tag]
        assert expected <= set(op["responses"]), (method, path)
        assert "422" not in op["responses"], (method, path)  # answered as 400 here
        example = op["responses"]["400"]["content"]["application/json"]["example"]
        assert set(example["error"]) == {"code", "message"}
    place = spec["paths"]["/api/v1/orders"]["post"]
    assert "RATE_LIMITED" in place["responses"]["429"]["description"]
    assert "INSUFFICIENT_FUNDS" in place["responses"]["400"]["description"]
    assert {"200", "201"} <= set(place["responses"])  # 200: a repeated client_order_id
    assert "202" in spec["paths"]["/api/v1/orders/{order_id}"]["delete"]["responses"]
    assert (await admin.http.get("/docs")).status_code == 200
