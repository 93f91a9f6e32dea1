#!/usr/bin/env bash
# Builds what ser_node needs into a venv (default ./.venv), from nothing: the venv, the ROS 2 core wheels, the
# interface packages in interfaces/, and ser_node itself.
#   scripts/setup.sh                      # everything: run time, training, tests (what scripts/test.sh uses)
#   scripts/setup.sh --runtime            # what a robot runs: numpy, ONNX Runtime, audio, VAD; no torch (the demo)
#   scripts/setup.sh --runtime --venv DIR # the same into another venv (test_runtime_install.py)
# Idempotent and fast on re-runs: each step leaves a stamp keyed on the files it depends on.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
profile=full
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) profile=runtime ;;
    --venv) venv="$(mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
py="${PYTHON:-python3}"
stamp_dir="$venv/.stamps"
build_dir="$venv/.build"  # interface package builds belong to the venv they are installed into
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*" >&2; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -f "$stamp_dir/$1" ] && [ "$(cat "$stamp_dir/$1")" = "$2" ]; }
mark() { mkdir -p "$stamp_dir"; echo "$2" > "$stamp_dir/$1"; }

if [ ! -x "$venv/bin/python" ]; then
  "$py" -c 'import sys; assert sys.version_info >= (3, 10), "ser_node needs Python 3.10+"'
  say "creating $venv"
  "$py" -m venv "$venv"
fi
log="$venv/setup.log"
: > "$log"
# pip's own chatter (hundreds of lines on some machines) goes to the log; it is shown only if a step fails.
pip_install() {
  "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || { tail -40 "$log" >&2; say "pip failed (full log: $log)"; exit 1; }
}
pip=(pip_install)

key=$(digest requirements/ros.txt)
if ! fresh ros "$key"; then
  say "installing ROS 2 core wheels"
  "${pip[@]}" -r requirements/ros.txt
  # The wheels' CMake exports name the wheel builder's Python include dirs; point them at this venv's.
  inc=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())' 2>/dev/null || true)
  if [ -z "$npinc" ]; then "${pip[@]}" -r requirements/runtime.txt; npinc=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())'); fi
  grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$venv/share" --include='*.cmake' 2>/dev/null | while read -r f; do
    sed -i -E "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$inc#g; s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#$npinc#g" "$f"
  done
  rm -f "$stamp_dir/interfaces"
  mark ros "$key"
fi

key=$(digest requirements/ros.txt $(find interfaces -type f | sort))
if ! fresh interfaces "$key"; then
  for pkg in audio_common_msgs hri_msgs vision_msgs ser_node_interfaces; do
    say "building interface package $pkg"
    rm -rf "$build_dir/$pkg"; mkdir -p "$build_dir"
    PATH="$venv/bin:$PATH" CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv" \
      "$venv/bin/cmake" -S "interfaces/$pkg" -B "$build_dir/$pkg" -G Ninja -DCMAKE_INSTALL_PREFIX="$venv" \
      -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv/bin/python" -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" >"$build_dir/$pkg.log" 2>&1 \
      && PATH="$venv/bin:$PATH" "$venv/bin/cmake" --build "$build_dir/$pkg" >>"$build_dir/$pkg.log" 2>&1 \
      && "$venv/bin/cmake" --install "$build_dir/$pkg" >>"$build_dir/$pkg.log" 2>&1 \
      || { tail -40 "$build_dir/$pkg.log" >&2; say "building $pkg failed (log: $build_dir/$pkg.log)"; exit 1; }
  done
  mark interfaces "$key"
fi

key=$(digest requirements/runtime.txt requirements/vad.txt setup.py)
if ! fresh python-runtime "$key"; then
  say "installing the run-time dependencies (numpy, ONNX Runtime, audio, VAD)"
  "${pip[@]}" -r requirements/runtime.txt
  # silero-vad declares torch as a requirement, but the node only runs the ONNX model inside its wheel.
  "${pip[@]}" --no-deps -r requirements/vad.txt
  mark python-runtime "$key"
fi

if [ "$profile" = full ]; then
  key=$(digest requirements/*.txt setup.py setup.cfg package.xml)
  if ! fresh python-full "$key"; then
    say "installing training and test dependencies"
    "${pip[@]}" -r requirements/runtime.txt -r requirements/train.txt -r requirements/test.txt
    # resemblyzer: only the GE2E encoder weights inside its wheel are used (training, export, tests).
    "${pip[@]}" --no-deps -r requirements/encoder.txt
    mark python-full "$key"
  fi
fi

# The package itself: a normal (non-editable) install also places launch/, config/ and the ament index
# marker under share/ser_node, as on a real ROS install. Cheap enough to redo every time.
say "installing ser_node"
"${pip[@]}" --no-deps --no-build-isolation . >/dev/null
say "ready: $venv ($profile)"
