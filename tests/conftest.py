"""Shared fixtures. A test that needs a missing component skips locally,
but fails when CI is set: CI must prove everything."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

IN_CI = bool(os.environ.get("CI"))

# The property tests check behaviour, not speed: a slow example on a busy
# 2-core CI machine must not fail them (scripts/bench_events measures speed).
settings.register_profile("lockerbus", deadline=None, print_blob=True)
settings.load_profile("lockerbus")


def require(available: bool, what: str) -> None:
    """Skip (fail under CI) when ``what`` is not on this machine."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but missing: .ci/run must install it")
    pytest.skip(f"{what} is not installed")


def require_binary(name: str) -> str:
    """The path of binary ``name``, or skip/fail as :func:`require` does."""
    path = shutil.which(name)
    require(path is not None, name)
    assert path is not None
    return path
