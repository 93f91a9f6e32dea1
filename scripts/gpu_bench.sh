#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py) on a machine with an NVIDIA GPU, from a bare one: the machine's own python3
# with torch (CUDA) for export and training, plus onnxruntime-gpu and the audio packages installed into a folder
# of their own (no venv, no ROS). Called by `scripts/bench.sh gpu`.
#   GPU_WHEELS=DIR  install from wheels in DIR only (a machine without a registry; DIR/site/ is copied as is)
#   GPU_SITE=DIR    where to install (default /tmp/ser_gpu_site); PYTHON (default python3)
# Other arguments go to bench/gpu.py (e.g. --out DIR --corpus DIR --fold-cap-s 200).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
site="${GPU_SITE:-/tmp/ser_gpu_site}"
py="${PYTHON:-python3}"
mkdir -p "$site"
if [ -n "${GPU_WHEELS:-}" ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$GPU_WHEELS"/*.whl
  [ -d "$GPU_WHEELS/site" ] && cp -r "$GPU_WHEELS/site/." "$site/"
else
  # CUDA 13 build of ONNX Runtime; its CUDA and cuDNN libraries come from the nvidia-* wheels torch installed.
  "$py" -m pip install -q --upgrade --target "$site" onnxruntime-gpu==1.31.1 soxr soundfile webrtcvad-wheels
  "$py" -m pip install -q --no-deps --target "$site" silero-vad==6.2.3
fi
export PYTHONPATH="$site:$root" OPENBLAS_NUM_THREADS=1
exec "$py" "$root/bench/gpu.py" "$@"
