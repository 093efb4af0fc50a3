#!/usr/bin/env bash
# Sets up (scripts/setup.sh), checks the import contracts (lint-imports) and runs the whole
# test suite against a real redis-server, a real local Ray and real MuJoCo rendering.
# Extra arguments go to pytest.
# pytest's exit code 5 (no tests collected) is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit $?
# The import rules between roles (pyproject.toml [tool.importlinter]) first: a broken one fails the run.
.venv/bin/lint-imports || { echo "test.sh: an import contract is broken (see above)" >&2; exit 1; }
export MUJOCO_GL=${MUJOCO_GL:-egl}
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5): failing the run" >&2
  exit 1
fi
exit "$rc"
