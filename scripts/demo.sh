#!/usr/bin/env bash
# The main job on its embedded default: ser_node on the shipped model, fed with the bundled Spanish demo audio,
# printing every emotion it publishes. Builds what is missing first: only what a robot installs (scripts/setup.sh
# --runtime: no torch or training packages), so the demo also proves the robot install path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" --runtime
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
exec "$root/.venv/bin/ser_demo" "$@"
