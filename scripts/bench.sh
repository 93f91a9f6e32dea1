#!/usr/bin/env bash
# Benchmarks (slow; they print progress): voice (the default model's LOSO table against openSMILE and DS-AM,
# skewed histories, LOCO, rooms and noise), accuracy (LOSO on uem-es, openSMILE baseline vs DeepSpectrum),
# performance (latency, idle cost, throughput), soak, and robustness (noise, reverberation, false alarms).
# Results go to bench/results/. Resumable: re-run to continue.
#   scripts/bench.sh                 # voice, accuracy and performance
#   scripts/bench.sh voice --parts loso,report
#   scripts/bench.sh performance --voice
#   scripts/bench.sh accuracy --methods compare_svm,default
#   scripts/bench.sh performance --quick
#   scripts/bench.sh soak --minutes 10
#   scripts/bench.sh hri_churn --minutes 10                # hostile ROS4HRI upstream (bench/hri_churn.py)
#   scripts/bench.sh conversations                         # normalisation by voice (bench/conversations.py)
#   scripts/bench.sh robustness --parts offline,node     # noise, rooms, false alarms (bench/robustness.py)
#   scripts/bench.sh gpu                                   # on an NVIDIA GPU machine (bench/gpu.py, scripts/gpu_bench.sh)
#   scripts/bench.sh mood                                  # moods against per-utterance events (bench/mood.py)
#   scripts/bench.sh scenes                                # robot TTS, television, babble (bench/scenes.py; espeak-ng)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The GPU bench runs on a bare GPU machine with its own python3 (torch with CUDA): no venv, no ROS.
if [ "${1:-}" = gpu ]; then shift; exec "$root/scripts/gpu_bench.sh" "$@"; fi
"$root/scripts/setup.sh"
"$root/.venv/bin/python" -m pip install -q -r "$root/requirements/bench.txt"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST OPENBLAS_NUM_THREADS=1
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((150 + $$ % 50))}"  # a domain of its own unless the caller chose one
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
what="${1:-all}"; [ $# -gt 0 ] && shift
case "$what" in
  voice) exec "$root/.venv/bin/python" "$root/bench/voice.py" "$@" ;;
  accuracy) exec "$root/.venv/bin/python" "$root/bench/accuracy.py" "$@" ;;
  performance) exec "$root/.venv/bin/python" "$root/bench/performance.py" "$@" ;;
  soak) exec "$root/.venv/bin/python" "$root/bench/soak.py" "$@" ;;
  hri_churn) exec "$root/.venv/bin/python" "$root/bench/hri_churn.py" "$@" ;;
  conversations) exec "$root/.venv/bin/python" "$root/bench/conversations.py" "$@" ;;
  robustness) exec "$root/.venv/bin/python" "$root/bench/robustness.py" "$@" ;;
  mood) exec "$root/.venv/bin/python" "$root/bench/mood.py" "$@" ;;
  scenes) exec "$root/.venv/bin/python" "$root/bench/scenes.py" "$@" ;;
  all) "$root/.venv/bin/python" "$root/bench/voice.py"
       "$root/.venv/bin/python" "$root/bench/accuracy.py" --methods egemaps_svm,compare_svm,ds_svc,ds_fc,default,default_tta
       exec "$root/.venv/bin/python" "$root/bench/performance.py" ;;
  *) echo "usage: scripts/bench.sh [voice|accuracy|performance|soak|hri_churn|conversations|robustness|mood|scenes|gpu|all] [options]" >&2; exit 2 ;;
esac
