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
# Bytecode for the project's own modules, as a regular (non-editable) install has: an editable
# install compiles them in every process that imports them when the environment sets
# PYTHONDONTWRITEBYTECODE (~60-90 ms per `lewis` command on a 2-core machine; BENCHMARKS.md,
# issue 18.4). Python checks each .pyc against its source, so an edited module is compiled
# afresh; this only refreshes what changed.
"$VENV/bin/python" -m compileall -q "$ROOT/lewis_tasks" "$ROOT/workers" "$ROOT/beat_schedule.py" >/dev/null
export PATH="$VENV/bin:$PATH"
