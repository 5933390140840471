"""The HTTP routes of contract §7 against a real server."""

from __future__ import annotations

import pytest

from tests.support import locker_event


async def test_healthz_and_readyz(server, http) -> None:
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
    async with http.get(f"{server.url}/readyz") as resp:
        assert resp.status == 200


async def test_post_event_returns_envelope(server, http) -> None:
    status, body = await server.post_event(http, locker_event(0))
    assert status == 201
    assert body["seq"] == 1 and body["type"] == "locker_state_changed"
    assert body["namespace"] == "/ws/lockers" and body["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b"[1,2]", 400, "bad_request"),
        (b'{"type":"nope","data":{}}', 422, "unknown_type"),
        (b'{"type":"locker_state_changed","data":{"lockerId":""}}', 422, "validation_error"),
        (b'{"type":"locker_state_changed","data":{},"version":"3.1"}', 422, "unsupported_version"),
    ],
)
async def test_post_event_errors(server, http, body, status, code) -> None:
    headers = {**server.headers(), "Content-Type": "application/json"}
    async with http.post(f"{server.url}/api/events", data=body, headers=headers) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
        assert error["code"] == code and error["message"]


async def test_validation_error_fields_over_http(server, http) -> None:
    payload = locker_event(0)
    payload["data"]["oldState"] = payload["data"]["newState"]
    del payload["data"]["kioskId"]
    status, body = await server.post_event(http, payload)
    assert status == 422
    assert set(body["error"]["fields"]) == {"data.newState", "data.kioskId"}


async def test_post_event_auth(server, http) -> None:
    async with http.post(f"{server.url}/api/events", json=locker_event(0)) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthorized"
    status, body = await server.post_event(http, locker_event(0), role="panel")
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_oversized_body_is_413(server, http) -> None:
    payload = locker_event(0)
    payload["data"]["metadata"] = {"blob": "x" * 70_000}
    status, body = await server.post_event(http, payload)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    big = b"x" * 300_000
    async with http.post(f"{server.url}/api/events", data=big, headers=server.headers()) as resp:
        assert resp.status == 413


async def test_get_events_pages_forward(server, http) -> None:
    for n in range(7):
        await server.post_event(http, locker_event(n))
    url = f"{server.url}/api/events"
    params = {"namespace": "/ws/lockers", "limit": "3"}
    async with http.get(url, params=params, headers=server.headers("kiosk", "kiosk-1")) as resp:
        page = await resp.json()
    assert [e["seq"] for e in page["events"]] == [1, 2, 3]
    assert page["has_more"] is True and page["last_seq"] == 3
    params["after_seq"] = str(page["last_seq"])
    params["limit"] = "10"
    async with http.get(url, params=params, headers=server.headers()) as resp:
        page = await resp.json()
    assert [e["seq"] for e in page["events"]] == [4, 5, 6, 7]
    assert page["has_more"] is False and page["last_seq"] == 7 and page["epoch"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"namespace": "/ws/nope"},
        {"namespace": "/ws/lockers", "limit": "1001"},
        {"namespace": "/ws/lockers", "limit": "0"},
        {"namespace": "/ws/lockers", "after_seq": "-1"},
        {"namespace": "/ws/lockers", "after_seq": "x"},
        {"namespace": "/ws/lockers", "since": "yesterday"},
        {"namespace": "/ws/lockers", "since": "2026-11-26T10:00:00"},
    ],
)
async def test_get_events_bad_parameters(server, http, params) -> None:
    async with http.get(f"{server.url}/api/events", params=params, headers=server.headers()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "bad_request"


async def test_get_events_needs_a_token(server, http) -> None:
    async with http.get(f"{server.url}/api/events?namespace=/ws/lockers") as resp:
        assert resp.status == 401


async def test_stats_needs_panel_gateway_or_admin(server, http) -> None:
    await server.post_event(http, locker_event(0))
    async with http.get(f"{server.url}/api/stats", headers=server.headers("kiosk")) as resp:
        assert resp.status == 403
    async with http.get(f"{server.url}/api/stats", headers=server.headers("panel")) as resp:
        stats = await resp.json()
    assert set(stats["connections"]) == {"/ws/lockers", "/ws/help", "/ws/events"}
    assert stats["broadcast_latency_ms"]["count"] >= 1
    assert stats["store"]["events"] >= 1


async def test_metrics_move_when_events_flow(server, http) -> None:
    async def scrape() -> str:
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    before = await scrape()
    assert 'lockerbus_events_published_total{type="locker_state_changed"}' not in before
    await server.post_event(http, locker_event(0))
    await server.post_event(http, {"type": "bad", "data": {}})
    after = await scrape()
    assert 'lockerbus_events_published_total{type="locker_state_changed"} 1.0' in after
    assert 'lockerbus_events_rejected_total{reason="unknown_type"} 1.0' in after
    assert "lockerbus_broadcast_latency_seconds_count 1.0" in after
    assert "lockerbus_store_events 1.0" in after


async def test_cors_is_same_origin_unless_configured(server_factory, http) -> None:
    origin = "https://panel.example"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    plain = await server_factory()
    async with http.options(f"{plain.url}/api/events", headers=preflight) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers

    server = await server_factory(cors_origins=(origin,))
    async with http.options(f"{server.url}/api/events", headers=preflight) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    async with http.get(
        f"{server.url}/api/events?namespace=/ws/lockers",
        headers={**server.headers(), "Origin": origin},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == origin
    other = {**preflight, "Origin": "https://evil.example"}
    async with http.options(f"{server.url}/api/events", headers=other) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_unknown_route_is_a_json_404(server, http) -> None:
    async with http.get(f"{server.url}/no/such/thing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["code"] == "not_found"
    assert "/no/such/thing" in body["error"]["message"]


async def test_wrong_method_is_a_json_405_with_allow(server, http) -> None:
    async with http.delete(f"{server.url}/api/events") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"
        assert "POST" in resp.headers["Allow"]
        body = await resp.json()
    assert body["error"]["code"] == "method_not_allowed"
    assert "DELETE" in body["error"]["message"]


async def test_server_header_names_no_versions(server, http) -> None:
    for path in ("/healthz", "/no/such/thing", "/metrics"):
        async with http.get(f"{server.url}{path}") as resp:
            header = resp.headers.get("Server", "")
        assert header == "lockerbus", (path, header)
        assert "Python" not in header and "aiohttp" not in header
