"""Tags, filters and scopes (contract §10): derivation, parsing, matching."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerbus.auth import Principal
from lockerbus.errors import BadRequestError
from lockerbus.filters import EVERYTHING, MAX_BYTES, Filter, parse_filter, parse_filter_json
from lockerbus.service import EventService
from lockerbus.tags import derive_tags, source, tag_event
from tests.eventdata import full_data, minimal_data, typed_data

SERVER = source(None, None)


def test_locker_state_changed_tags() -> None:
    data = full_data("locker_state_changed")
    assert derive_tags("locker_state_changed", data, SERVER) == {
        "kiosk": data["kioskId"],
        "locker": data["lockerId"],
        "state": data["newState"],
    }


def test_help_requested_tags() -> None:
    data = minimal_data("help_requested")
    assert derive_tags("help_requested", data, SERVER) == {
        "kiosk": data["kiosk_id"],
        "help": str(data["id"]),
        "status": data["status"],
        "priority": data["priority"],
        "category": data["category"],
    }


def test_help_status_updated_takes_the_requests_kiosk() -> None:
    data = full_data("help_status_updated")
    known = derive_tags("help_status_updated", data, SERVER, help_kiosk="kiosk-9")
    assert known == {"kiosk": "kiosk-9", "help": str(data["id"]), "status": data["new_status"]}
    unknown = derive_tags("help_status_updated", data, SERVER)
    assert "kiosk" not in unknown
    assert unknown["status"] == data["new_status"]


@pytest.mark.parametrize("success", [True, False])
def test_command_applied_tags(success: bool) -> None:
    data = full_data("command_applied")
    data["result"]["success"] = success
    tags = derive_tags("command_applied", data, SERVER)
    assert tags == {
        "kiosk": data["command"]["kioskId"],
        "locker": data["command"]["lockerId"],
        "command": data["command"]["type"],
        "status": "success" if success else "failure",
    }
    del data["command"]["lockerId"]
    assert "locker" not in derive_tags("command_applied", data, SERVER)


def test_system_status_kiosk_tag_only_from_a_kiosk() -> None:
    data = full_data("system_status")
    base = {"component": data["component"], "status": data["status"]}
    assert derive_tags("system_status", data, source("kiosk-3", "kiosk")) == {
        **base,
        "kiosk": "kiosk-3",
    }
    assert derive_tags("system_status", data, source("gw", "gateway")) == base
    # the server's own kiosk online/offline events (§11) name the kiosk in details
    offline = {"component": "kiosk", "status": "offline", "health_score": 0}
    offline["details"] = {"kioskId": "kiosk-4"}
    assert derive_tags("system_status", offline, SERVER)["kiosk"] == "kiosk-4"


@pytest.mark.parametrize("event_type", ["connection", "disconnection"])
def test_connection_tags(event_type: str) -> None:
    data = full_data(event_type)
    assert derive_tags(event_type, data, SERVER) == {"principal": data["userId"]}


def test_envelope_carries_tags_and_source_and_still_deserializes() -> None:
    service = EventService()
    event = service.create_event("locker_state_changed", full_data("locker_state_changed"))
    tag_event(event, source("kiosk-1", "kiosk"))
    assert event["source"] == {"sub": "kiosk-1", "role": "kiosk"}
    assert event["tags"]["locker"] == event["data"]["lockerId"]
    event["seq"], event["epoch"] = 1, "e"
    assert service.deserialize(service.serialize(event)) == event
    assert source(None, None) == {"role": "server"}


@settings(max_examples=200)
@given(typed_data)
def test_every_type_derives_string_tags(typed: tuple[str, dict[str, Any]]) -> None:
    event_type, data = typed
    valid = EventService().validate(event_type, data)
    tags = derive_tags(event_type, valid, source("k", "kiosk"), help_kiosk="k")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())


# -- filters ----------------------------------------------------------------------


def test_filter_matching() -> None:
    f = parse_filter({"kiosk": ["k1", "k2"], "state": "error"})
    assert f.matches({"kiosk": "k1", "state": "error", "locker": "L1"})
    assert not f.matches({"kiosk": "k3", "state": "error"})
    assert not f.matches({"kiosk": "k1"})  # a missing tag never matches
    assert parse_filter({}).matches({}) and parse_filter({}) == EVERYTHING


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "must be an object"),
        ("kiosk", "must be an object"),
        ({"kiosk": []}, "1 to 100 values"),
        ({"kiosk": 3}, "string or a list"),
        ({"kiosk": {"a": "b"}}, "string or a list"),
        ({"kiosk": ["a", 1]}, "strings only"),
        ({"kiosk": ["v"] * 101}, "1 to 100 values"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"kiosk": ["x" * 300] * 20}, f"at most {MAX_BYTES}"),
        ({"": "v"}, "tag names"),
    ],
)
def test_malformed_filters_name_the_problem(value: Any, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem):
        parse_filter(value)


def test_filter_json() -> None:
    assert parse_filter_json('{"kiosk": "k1"}') == Filter({"kiosk": frozenset({"k1"})})
    with pytest.raises(BadRequestError, match="not valid JSON"):
        parse_filter_json("{kiosk")
    with pytest.raises(BadRequestError, match="bytes"):
        parse_filter_json(" " * (MAX_BYTES + 1))


def test_kiosk_scope_is_always_its_own_kiosk() -> None:
    kiosk = Principal("k1", "kiosk", scope=parse_filter({"kiosk": ["k1", "k2"]}))
    assert kiosk.reach.matches({"kiosk": "k1"})
    assert not kiosk.reach.matches({"kiosk": "k2"})
    connection = {"type": "connection", "tags": {"principal": "k1", "kiosk": "k1"}}
    assert not kiosk.reads(connection)
    assert Principal("p", "panel").reads(connection)


# -- the property: a narrowed filter matches exactly what both match ----------------

NAMES = st.sampled_from(["kiosk", "locker", "state", "status", "help"])
VALUES = st.sampled_from(["a", "b", "c", "d"])
filters = st.dictionaries(NAMES, st.one_of(VALUES, st.lists(VALUES, min_size=1, max_size=3)))
tag_sets = st.dictionaries(NAMES, VALUES)


def reference_match(spec: dict[str, Any], tags: dict[str, str]) -> bool:
    """§10 as written: every key present in tags with the value or one of the list."""
    for key, want in spec.items():
        allowed = [want] if isinstance(want, str) else want
        if key not in tags or tags[key] not in allowed:
            return False
    return True


@settings(max_examples=500)
@given(scope=filters, client=filters, tags=tag_sets, role=st.sampled_from(["kiosk", "panel"]))
def test_scope_and_filter_match_consistently(
    scope: dict[str, Any], client: dict[str, Any], tags: dict[str, str], role: str
) -> None:
    compiled_scope, compiled_client = parse_filter(scope), parse_filter(client)
    assert compiled_scope.matches(tags) == reference_match(scope, tags)
    principal = Principal("a", role, scope=compiled_scope)
    own_kiosk = role != "kiosk" or tags.get("kiosk") == "a"
    view = principal.view(compiled_client)
    # a client filter never widens the scope; the view is exactly scope AND filter
    assert view.matches(tags) == (
        reference_match(scope, tags) and reference_match(client, tags) and own_kiosk
    )
    event = {"type": "locker_state_changed", "tags": tags}
    assert principal.reads(event) == (reference_match(scope, tags) and own_kiosk)
    assert principal.may_publish(event) == principal.reads(event)


# -- per-connection views and the kiosk-indexed audience (for socket delivery) ----------


def test_connection_views() -> None:
    from lockerbus.views import ConnectionViews

    kiosk = Principal("k1", "kiosk")
    views = ConnectionViews.from_auth(kiosk, {"filter": {"state": "error"}})
    assert views.fallback({"kiosk": "k1", "state": "error"})
    assert not views.fallback({"kiosk": "k1", "state": "open"})
    assert not views.fallback({"kiosk": "k2", "state": "error"})  # never wider than the scope
    assert views.room("locker_updates", {"kiosk": "k1", "state": "open"})  # no room filter
    views.subscribe("locker_updates", {"locker": ["L1"]})
    assert views.room("locker_updates", {"kiosk": "k1", "locker": "L1"})
    assert not views.room("locker_updates", {"kiosk": "k2", "locker": "L1"})
    views.unsubscribe("locker_updates")
    assert views.room("locker_updates", {"kiosk": "k1", "locker": "L9"})
    events = [{"tags": {"kiosk": "k1", "state": "error"}}, {"tags": {"kiosk": "k1"}}, {"x": 1}]
    assert views.replay(events) == events[:1]
    with pytest.raises(BadRequestError, match=r"auth\.filter"):
        ConnectionViews.from_auth(kiosk, {"filter": {"kiosk": []}})


@settings(max_examples=300)
@given(
    members=st.lists(st.tuples(filters, st.sampled_from(["kiosk", "panel"]))),
    tags=tag_sets,
)
def test_audience_yields_exactly_the_members_whose_scope_matches(
    members: list[tuple[dict[str, Any], str]], tags: dict[str, str]
) -> None:
    from lockerbus.views import Audience

    audience: Audience[int, int] = Audience()
    principals = {}
    for key, (scope, role) in enumerate(members):
        principals[key] = Principal(f"{'abcd'[key % 4]}", role, scope=parse_filter(scope))
        audience.add(key, key, principals[key].reach)
    for key in list(principals)[::3]:  # some leave again
        audience.discard(key)
        del principals[key]
    readers = list(audience.readers(tags))
    assert sorted(readers) == sorted(k for k, p in principals.items() if p.reach.matches(tags))
    assert len(set(readers)) == len(readers)
    assert audience.any_reader(tags) == bool(readers)
    assert len(audience) == len(principals)
