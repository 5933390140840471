"""Summarize a py-spy ``--format raw`` profile (collapsed stacks): where the time goes.

    python bench/profile_summary.py prof/fanout_1000x20-plain.txt [--top 25]

Prints the functions with the most self time (the leaf of each stack) and the
most inclusive time (anywhere in the stack), as % of the samples taken while
the process was busy (py-spy leaves idle samples out by default).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
# "emit (socketio/async_manager.py:44)" -> "emit (socketio/async_manager.py)"
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    function, path = match.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    return f"{function} ({'/'.join(parts[-2:])})"


def summarize(text: str, top: int) -> str:
    """The report for the collapsed stacks in ``text``."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        stack, count = match.group(1), int(match.group(2))
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self %   function"]
    out += [f"{100 * n / total:6.1f}   {f}" for f, n in self_time.most_common(top)]
    out += ["", "incl %   function"]
    out += [f"{100 * n / total:6.1f}   {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description="Summarize a py-spy raw profile.")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(args.profile.read_text(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
