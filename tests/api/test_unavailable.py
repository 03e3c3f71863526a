"""Redis not answering: every route says 503 UNAVAILABLE in the API's own terms."""

from __future__ import annotations

import httpx
import psutil

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.common.secrets_box import new_key
from tests.support.servers import single_node


async def test_requests_get_503_unavailable_while_redis_is_gone(tmp_path) -> None:
    with single_node(tmp_path) as url:
        app = create_app(ApiSettings(redis_url=url, secrets_key=new_key(), admin_token="op"))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                assert (await http.get("/api/v1/markets/BTC-USD/ticker")).status_code == 200
                port = int(url.rsplit(":", 1)[1])
                server = next(c.pid for c in psutil.net_connections("tcp")
                              if c.status == psutil.CONN_LISTEN and c.laddr.port == port)
                psutil.Process(server).kill()  # the only node dies
                public = await http.get("/api/v1/markets/BTC-USD/book")
                operator = await http.post("/api/v1/admin/accounts",
                                           json={}, headers={"Authorization": "Bearer op"})
    for response in (public, operator):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "UNAVAILABLE"
