# Sourced by scripts/*: make .venv when missing and install lockerbus into it.
# Re-running is cheap: the install is skipped while setup.cfg and pyproject.toml are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
ensure_installed() {
  local extras="$1" stamp="$VENV/.installed-$1"
  local want; want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    local spec="$ROOT"
    [ -n "$extras" ] && [ "$extras" != "base" ] && spec="$ROOT[$extras]"
    "$VENV/bin/python" -m pip install -q -e "$spec"
    echo "$want" > "$stamp"
  fi
}
