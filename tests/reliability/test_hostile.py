"""Hostile input: fuzzed payloads through real clients, malformed frames, bad HTTP, bad tokens.

Whatever arrives, the server answers with a contract error or closes that
connection; it never crashes (no traceback in its log), never stores an
event that does not deserialize, and other clients keep being served.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from socketio import packet as socketio_packet

from lockerbus.service import EventService
from tests.processes import ServerProcess, stored_events
from tests.reliability.clients import LOCKERS, Tracker
from tests.reliability.conftest import HEAVY, record
from tests.reliability.loopthread import LoopThread
from tests.reliability.rawsio import RawSocket
from tests.support import SECRET, Client, connect, locker_event

# hypothesis warns when it prints a 200 kB example; that is the point of some of them
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

EXAMPLES = 400 if HEAVY else 60
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
CODES = {
    "validation_error",
    "unknown_type",
    "forbidden",
    "bad_request",
    "payload_too_large",
    "rate_limited",
    "store_unavailable",
    "unsupported_version",
    "unauthorized",
}
HELP, EVENTS = "/ws/help", "/ws/events"

# -- strategies ---------------------------------------------------------------

edge_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "é" * 300, "😀" * 70, "a" * 70_000]
    ),
)
edge_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63, -(2**63) - 1, 10**400 // 10**300, 1e308, -0.0]),
)
leaves = st.one_of(st.none(), st.booleans(), edge_numbers, edge_text)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(edge_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"a": [value]}
    return value


deep_values = st.sampled_from([nested(150), nested(400)])  # the client's json caps depth
hostile_values = st.one_of(json_values, deep_values)

EVENT_TYPES = [
    "locker_state_changed",
    "help_requested",
    "help_status_updated",
    "system_status",
    "command_applied",
    "connection",
]


@st.composite
def mutated_locker_event(draw: st.DrawFn) -> Any:
    """A valid publish with one part replaced: the interesting inputs are near-valid."""
    body: dict[str, Any] = locker_event(draw(st.integers(0, 9)))
    where = draw(st.sampled_from(["type", "data", "room", "version", "field", "extra"]))
    if where == "field":
        key = draw(st.sampled_from([*body["data"], "metadata", "userId", "reason"]))
        body["data"][key] = draw(hostile_values)
    elif where == "extra":
        body[draw(edge_text)] = draw(hostile_values)
    else:
        body[where] = draw(st.one_of(hostile_values, st.sampled_from(EVENT_TYPES)))
    return body


publish_payloads = st.one_of(
    hostile_values,
    mutated_locker_event(),
    st.fixed_dictionaries(
        {"type": st.sampled_from(EVENT_TYPES), "data": hostile_values},
        optional={"room": hostile_values, "version": hostile_values},
    ),
)


MAX_FRAME = 65_536 * 2 + 65_536  # the server's max_http_buffer_size at the default event size


def may_close_on(text: str) -> bool:
    """Whether a CONNECT to /ws/lockers carrying ``text`` may be answered by a close:
    over the frame limit, or not readable by python-socketio's packet decoder."""
    if len(f"40{LOCKERS},{text}".encode(errors="surrogatepass")) > MAX_FRAME:
        return True
    try:
        socketio_packet.Packet(encoded_packet=f"0{LOCKERS},{text}")
    except (ValueError, RecursionError):
        return True
    return False


# -- the harness ----------------------------------------------------------------


CLOSED = {"closed": True}  # what call() returns when the server closed the connection


class Hostile:
    """A server, a fuzzing client and a bystander that must not notice anything."""

    def __init__(self, server: ServerProcess, loop: LoopThread) -> None:
        self.server, self.loop = server, loop
        self.fuzzer = self._connect("gateway", "gateway-1", [LOCKERS, HELP, EVENTS])
        self.kiosk = self._connect("kiosk", "kiosk-7", [LOCKERS, EVENTS])
        self.bystander = loop.run(Tracker(server, "panel-bystander").connect())
        self.closed = 0

    def _connect(self, role: str, sub: str, namespaces: list[str]) -> Client:
        return self.loop.run(
            connect(self.server, namespaces, role=role, sub=sub, auth={"replay": False})
        )

    def call(self, client: Client, event: str, payload: Any, namespace: str) -> Any:
        """The ack, or CLOSED when the server closed this client's connection instead."""

        async def call_or_closed() -> Any:
            call = asyncio.ensure_future(client.sio.call(event, payload, namespace=namespace))
            gone = asyncio.ensure_future(
                client.wait_for(lambda: "disconnect" in client.names(namespace))
            )
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if call.done():
                return call.result()
            call.cancel()
            return CLOSED

        answer = self.loop.run(call_or_closed())
        if answer is CLOSED:  # allowed; carry on with a fresh connection
            self.closed += 1
            self.loop.run(client.close())
            fresh = (
                self._connect("kiosk", "kiosk-7", [LOCKERS, EVENTS])
                if client is self.kiosk
                else self._connect("gateway", "gateway-1", [LOCKERS, HELP, EVENTS])
            )
            client.sio, client.received = fresh.sio, fresh.received
            client._changed = fresh._changed
        return answer

    def check_answer(self, answer: Any) -> None:
        """``{ok: true, event}``, ``{ok: false, error: {code, message}}`` or a close."""
        if answer is CLOSED:
            return
        assert isinstance(answer, dict), answer
        if answer.get("ok") is True:
            EventService().deserialize(answer["event"])
            return
        assert answer.get("ok") is False, answer
        error = answer["error"]
        assert error["code"] in CODES, error
        assert isinstance(error["message"], str) and error["message"], error

    def check_server(self) -> None:
        """Still serving; everything stored deserializes; the bystander saw it all in order."""
        assert self.server.healthy()
        service = EventService()
        for namespace in (LOCKERS, HELP, EVENTS):
            stored, _ = self.loop.run(stored_events(self.server, namespace))
            for event in stored:
                service.deserialize(event)
        answer = self.call(self.fuzzer, "publish", locker_event(1), LOCKERS)
        assert answer["ok"] is True, answer
        self.loop.run(self.bystander.wait_until(answer["event"]["seq"]))
        assert self.bystander.violations == []
        stored, _ = self.loop.run(stored_events(self.server, LOCKERS))
        assert self.bystander.seqs == [e["seq"] for e in stored]
        assert not self.server.crashes(), self.server.log()

    def close(self) -> None:
        for client in (self.fuzzer, self.kiosk, self.bystander):
            self.loop.run(client.close())


@pytest.fixture
def hostile(server_process) -> Iterator[Hostile]:
    loop = LoopThread()
    harness = Hostile(server_process("memory"), loop)
    try:
        yield harness
        harness.check_server()
    finally:
        harness.close()
        loop.close()


# -- fuzzing through real clients ---------------------------------------------


def test_fuzz_publish(hostile: Hostile) -> None:
    @FUZZ
    @given(payload=publish_payloads, namespace=st.sampled_from([LOCKERS, HELP, EVENTS]))
    def publish(payload: Any, namespace: str) -> None:
        hostile.check_answer(hostile.call(hostile.fuzzer, "publish", payload, namespace))

    publish()
    record("hostile", publish_examples=EXAMPLES)


def test_fuzz_publish_as_a_kiosk(hostile: Hostile) -> None:
    @FUZZ
    @given(payload=publish_payloads)
    def publish(payload: Any) -> None:
        answer = hostile.call(hostile.kiosk, "publish", payload, LOCKERS)
        hostile.check_answer(answer)
        if answer.get("ok"):  # a kiosk only ever publishes for itself
            data = answer["event"]["data"]
            assert data.get("kioskId", data.get("kiosk_id", "kiosk-7")) == "kiosk-7"

    publish()


def test_fuzz_subscribe_and_command(hostile: Hostile) -> None:
    @FUZZ
    @given(
        event=st.sampled_from(["subscribe", "unsubscribe", "command"]),
        payload=st.one_of(
            hostile_values,
            st.fixed_dictionaries({"room": hostile_values}),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["open", "reset"]), "kioskId": hostile_values},
                optional={"lockerId": hostile_values, "parameters": hostile_values},
            ),
        ),
    )
    def call(event: str, payload: Any) -> None:
        answer = hostile.call(hostile.fuzzer, event, payload, EVENTS)
        if event == "command" and answer.get("ok"):
            # nothing answers for a kiosk that is not connected
            assert answer["event"]["data"]["result"]["success"] is False
        hostile.check_answer(answer)

    call()


def test_fuzz_connect_auth(hostile: Hostile) -> None:
    async def attempt(auth: Any) -> str | None:
        """The server's answer to CONNECT with ``auth``; None when it closed the connection."""
        raw = await RawSocket.open(hostile.server.url)
        text = json.dumps(auth)  # Python's json, as python-socketio: NaN, big ints, surrogates
        try:
            await raw.send(f"40{LOCKERS},{text}")
            return await raw.recv()
        except ConnectionError:
            return None
        finally:
            await raw.close()

    valid = hostile.server.token("panel")

    @FUZZ
    @given(
        auth=st.one_of(
            hostile_values,
            st.fixed_dictionaries(
                {"token": st.one_of(hostile_values, st.just(valid))},
                optional={
                    "last_seq": hostile_values,
                    "epoch": hostile_values,
                    "since": hostile_values,
                    "replay": hostile_values,
                },
            ),
        )
    )
    def connect_with(auth: Any) -> None:
        answer = hostile.loop.run(attempt(auth))
        if answer is None:
            # only for a frame Socket.IO cannot read (`40/ns,0.0` parses 0 as an ack id,
            # its JSON refuses integers over 100 digits) or one over the frame limit
            assert not isinstance(auth, dict) or may_close_on(json.dumps(auth)), auth
            return
        if answer.startswith(f"40{LOCKERS},"):
            assert isinstance(auth, dict) and auth.get("token") == valid
            return
        assert answer.startswith(f"44{LOCKERS},"), answer
        error = orjson.loads(answer.split(",", 1)[1])
        assert error["message"] in {"unauthorized", "bad_request", "forbidden"}, error
        assert error["data"]["code"] == error["message"]

    connect_with()


# -- malformed Socket.IO / Engine.IO frames over a bare websocket ---------------

FRAME_PREFIXES = [
    "", "0", "1", "2", "3", "4", "5", "6", "7", "40", "41", "42", "43", "44", "45", "46", "49",
    f"40{LOCKERS},", f"41{LOCKERS},", f"42{LOCKERS},", f"42{LOCKERS},7", f"43{LOCKERS},7",
    f"451-{LOCKERS},", "40/nope,", "42/nope,", "4/,", "2probe", "5probe",
]  # fmt: skip
deep_json = st.integers(100, 5000).map(lambda n: "[" * n + "]" * n)
frames = st.one_of(
    st.builds(
        lambda prefix, body: prefix + body,
        st.sampled_from(FRAME_PREFIXES),
        st.one_of(st.text(max_size=80), json_values.map(json.dumps), deep_json),
    ),
    st.binary(max_size=64),
)


def test_fuzz_raw_frames(hostile: Hostile) -> None:
    token = hostile.server.token("panel", "panel-raw")

    async def attempt(frame: str | bytes) -> None:
        raw = await RawSocket.open(hostile.server.url)
        try:
            assert (await raw.join(LOCKERS, {"token": token, "replay": False})).startswith("40")
            assert "replay_complete" in await raw.recv()
            try:
                await raw.send(frame)
                if isinstance(frame, str) and frame.startswith(("45", "46")):
                    # a binary event/ack placeholder: Socket.IO takes the next frames as
                    # its attachments, so feed it some before the probe
                    for _ in range(10):
                        await raw.send(b"\x00")
                # then a well-formed call: it is answered, or the connection was closed
                await raw.send(f'40{HELP},{{"token": "{token}", "replay": false}}')
            except ConnectionError:
                return  # the server closed this connection already: allowed
            while True:
                try:
                    text = await raw.recv()
                except ConnectionError:
                    return  # closed: allowed
                if text.startswith(f"40{HELP},"):
                    return  # still served
                assert not text.startswith(f"44{HELP},"), text
        finally:
            await raw.close()

    @FUZZ
    @given(frame=frames)
    def send(frame: str | bytes) -> None:
        hostile.loop.run(attempt(frame))

    send()


# -- HTTP and tokens ----------------------------------------------------------


def forged(role: str, sub: str, **claims: Any) -> str:
    body = {"sub": sub, "role": role, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, "another-secret-" + "y" * 40, algorithm="HS256")


def unsigned(role: str, sub: str) -> str:
    body = {"sub": sub, "role": role, "exp": int(time.time()) + 600}
    return jwt.encode(body, None, algorithm="none")  # type: ignore[arg-type]


async def test_http_and_token_abuse(server_process) -> None:
    server = server_process("memory")
    url = f"{server.url}/api/events"
    expired = jwt.encode(
        {"sub": "gateway-1", "role": "gateway", "exp": int(time.time()) - 5}, SECRET, "HS256"
    )
    bystander = await Tracker(server, "panel-bystander").connect()
    cases: list[tuple[str, dict[str, str], bytes | None, int, str]] = [
        ("invalid JSON", server.headers(), b'{"type": ', 400, "bad_request"),
        ("not an object", server.headers(), b"[1, 2]", 400, "bad_request"),
        ("oversized body", server.headers(), b'{"x": "' + b"a" * 300_000 + b'"}', 413, ""),
        ("no token", {}, orjson.dumps(locker_event(1)), 401, "unauthorized"),
        ("forged", {"Authorization": f"Bearer {forged('admin', 'admin')}"}, orjson.dumps(locker_event(1)), 401, "unauthorized"),
        ("alg none", {"Authorization": f"Bearer {unsigned('admin', 'admin')}"}, orjson.dumps(locker_event(1)), 401, "unauthorized"),
        ("expired", {"Authorization": f"Bearer {expired}"}, orjson.dumps(locker_event(1)), 401, "unauthorized"),
        ("garbage token", {"Authorization": "Bearer a.b.c"}, orjson.dumps(locker_event(1)), 401, "unauthorized"),
        ("other kiosk", server.headers("kiosk", "kiosk-2"), orjson.dumps(locker_event(1, "kiosk-1")), 403, "forbidden"),
        ("kiosk names a room", server.headers("kiosk", "kiosk-1"), orjson.dumps({**locker_event(1), "room": "kiosk:kiosk-9"}), 403, "forbidden"),
    ]  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for name, headers, body, status, code in cases:
            async with http.post(
                url, data=body, headers={**headers, "Content-Type": "application/json"}
            ) as resp:
                assert resp.status == status, (name, resp.status, await resp.text())
                if code:
                    assert (await resp.json())["error"]["code"] == code, name

        # a body streamed without Content-Length is cut off at the limit too
        async def chunks() -> Any:
            for _ in range(40):
                yield b"a" * 16384

        async with http.post(url, data=chunks(), headers=server.headers()) as resp:
            assert resp.status == 413
        async with http.get(
            f"{server.url}/api/stats", headers=server.headers("kiosk", "kiosk-1")
        ) as resp:
            assert resp.status == 403

    # over a socket: a kiosk cannot act as another one, nor connect with a forged token
    kiosk = await connect(server, LOCKERS, role="kiosk", sub="kiosk-2", auth={"replay": False})
    answer = await kiosk.call("publish", locker_event(1, "kiosk-1"), LOCKERS)
    assert answer["error"]["code"] == "forbidden"
    answer = await kiosk.call("command", {"type": "open", "kioskId": "kiosk-1"}, LOCKERS)
    assert answer["ok"] is False
    await kiosk.close()
    for token in (forged("admin", "admin"), unsigned("admin", "admin"), expired):
        refused = await connect(server, LOCKERS, token=token, expect_refusal=True)
        await refused.wait_for(lambda r=refused: LOCKERS in r.connect_errors)
        assert refused.connect_errors[LOCKERS]["data"]["code"] == "unauthorized"
        await refused.close()

    # nothing of that was stored; the bystander is still served
    stored, _ = await stored_events(server, LOCKERS)
    assert stored == []
    async with aiohttp.ClientSession() as http:
        status, _ = await post(http, server, locker_event(1))
    assert status == 201
    await bystander.wait_until(1)
    assert bystander.seqs == [1]
    await bystander.close()


async def post(http: aiohttp.ClientSession, server: ServerProcess, body: Any) -> tuple[int, Any]:
    async with http.post(f"{server.url}/api/events", json=body, headers=server.headers()) as r:
        return r.status, await r.json()


async def test_named_malformed_frames_get_an_answer_or_a_close(server_process) -> None:
    """The frames the fuzzer found, pinned: each is answered or its connection closed."""
    server = server_process("memory")
    token = server.token("panel")

    async def joined() -> RawSocket:
        raw = await RawSocket.open(server.url)
        assert (await raw.join(LOCKERS, {"token": token, "replay": False})).startswith("40")
        assert "replay_complete" in await raw.recv()
        return raw

    raw = await joined()  # an event name that is not a string: answered bad_request
    await raw.send(f'42{LOCKERS},5[["publish"],{{}}]')
    answer = await raw.recv()
    assert answer.startswith(f"43{LOCKERS},5"), answer
    assert orjson.loads(answer.split(",", 1)[1][1:])[0]["error"]["code"] == "bad_request"
    await raw.close()
    for frame in ["7", "9x", "", "4" + "[" * 3000 + "]" * 3000, f"42{LOCKERS},1" + "0" * 120]:
        raw = await joined()
        await raw.send(frame)
        with pytest.raises(ConnectionError):
            await raw.recv()
        await raw.close()
    # a token with a lone surrogate is refused like any bad token, not dropped
    raw = await RawSocket.open(server.url)
    answer = await raw.join(LOCKERS, {"token": "\ud800"})
    assert answer.startswith(f"44{LOCKERS},"), answer
    assert orjson.loads(answer.split(",", 1)[1])["message"] == "unauthorized"
    await raw.close()
    assert server.healthy()
