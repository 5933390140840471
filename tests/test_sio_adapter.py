"""Every private library name lockerbus relies on still exists as used.

An upgrade of python-socketio, python-engineio, asyncio or marshmallow that
removes or changes one fails here, naming it, instead of somewhere deep in a
broadcast.  And no module outside the two adapters reaches for one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lockerbus
from lockerbus.fastcheck import MARSHMALLOW_INTERNALS
from lockerbus.sio_adapter import INTERNALS, Internal, check_internal, check_internals

PACKAGE = Path(lockerbus.__file__).parent
ADAPTERS = {"sio_adapter.py", "sio_receive.py", "sio_rooms.py", "fastcheck.py"}


@pytest.mark.parametrize("item", INTERNALS, ids=lambda item: item.symbol)
def test_each_socketio_engineio_asyncio_internal_holds(item: Internal) -> None:
    problem = check_internal(item)
    assert problem is None, f"library internal changed: {problem}"


@pytest.mark.parametrize(
    "check", MARSHMALLOW_INTERNALS, ids=[symbol for symbol, _ in MARSHMALLOW_INTERNALS]
)
def test_each_marshmallow_internal_holds(check: tuple[str, object]) -> None:
    symbol, holds = check
    assert callable(holds)
    assert holds(), f"library internal changed: {symbol}"


def test_a_changed_internal_is_reported_by_name() -> None:
    """The check is not vacuous: a name that is not there is named."""

    class Library:
        def __init__(self) -> None:
            self.present = 1

        async def method(self) -> None:
            return None

        def plain(self) -> None:
            return None

    gone = Internal("lib.Library._gone", Library, "_gone", "coroutine")
    unset = Internal("lib.Library._unset", Library, "_unset", "assigned")
    changed = Internal("lib.Library.method", Library, "method", "asyncgen")
    assert check_internal(gone) == "lib.Library._gone: removed"
    assert check_internal(unset) == "lib.Library._unset: no longer set by Library.__init__"
    assert check_internal(changed) == "lib.Library.method: no longer an async generator"
    coroutine = Internal("lib.Library.method", Library, "method", "method")
    assert check_internal(coroutine) == "lib.Library.method: no longer a plain method"
    assert check_internal(Internal("lib.Library.plain", Library, "plain", "method")) is None
    assert check_internal(Internal("lib.Library.present", Library, "present", "assigned")) is None


def test_all_hold_together() -> None:
    assert check_internals() == []


# the library internals above, as reached on another object: ``self._x`` is our own,
# and a custom field calling ``super()._deserialize`` is marshmallow's documented way
PRIVATE_USES = re.compile(
    r"_handle_eio_message|_handle_connect|manager_initialized|_redis_listen_with_retries|_redis_connect"
    r"|(?<!self)(?<!super\(\))\.(_async|_queue|_getters|_hooks|_deserialize|_listen|_publish|_thread|_sock)\b"
)


def test_no_module_outside_the_adapters_uses_a_library_internal() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ADAPTERS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_USES.search(line)
    ]
    assert offenders == [], "library internals outside lockerbus/sio_adapter.py:\n" + "\n".join(
        offenders
    )
