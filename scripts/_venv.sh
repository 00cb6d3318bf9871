# Sourced by scripts/up and scripts/test: make .venv and install the project into it, once per
# change of pyproject.toml. Needs only python3 (3.11+) on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LEWIS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.lewis-installed"
# constraints.txt pins what the suite last ran with; LEWIS_CONSTRAINTS= (empty) installs unpinned
constraints="${LEWIS_CONSTRAINTS-$ROOT/constraints.txt}"
pins=()
if [ -n "$constraints" ] && [ -f "$constraints" ]; then
  pins=(-c "$constraints")
fi
want="$(cat "$ROOT/pyproject.toml" ${pins[1]:+"${pins[1]}"} | sha256sum | cut -d' ' -f1)-${LEWIS_EXTRAS:-dev}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${pins[@]}" -e "$ROOT[${LEWIS_EXTRAS:-dev}]"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
