#!/usr/bin/env bash
# The test command: builds what is missing (scripts/setup.sh) and runs the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k node -x
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
# DDS discovery never leaves this machine; conftest.py gives every test process its own domain id.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export OPENBLAS_NUM_THREADS=1
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
exec "$root/.venv/bin/python" -m pytest "$@"
