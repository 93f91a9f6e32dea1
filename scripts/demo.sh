#!/usr/bin/env bash
# The main job on its embedded default: ser_node on the shipped model, fed with the bundled Spanish demo audio,
# printing every emotion it publishes. Builds what is missing first (scripts/setup.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
exec "$root/.venv/bin/ser_demo" "$@"
