#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite against a real redis-server,
# a real local Ray and real MuJoCo rendering. Extra arguments go to pytest.
# pytest's exit code 5 (no tests collected) is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit $?
export MUJOCO_GL=${MUJOCO_GL:-egl}
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5): failing the run" >&2
  exit 1
fi
exit "$rc"
