#!/usr/bin/env bash
# Compatibility check, one command: runtime-only venvs (no ROS, no training packages) on the Pythons robots have,
# each classifying the demo audio with every shipped model (bench/runtime_parity.py, training imports blocked)
# and compared with the reference run (bench/results/runtime_reference.json: Python 3.11, the pinned set).
#   Python 3.10 with the lowest supported versions (requirements/runtime-lowest.txt): Ubuntu 22.04 / Humble, JetPack 6
#   Python 3.12 and 3.13 with the newest (requirements/runtime.txt): Ubuntu 24.04 / Jazzy, and after
# Interpreters: PY310, PY312, PY313 if set, else pyenv's newest 3.10.x / 3.12.x / 3.13.x, else python3.X on PATH.
# Writes compat.json and compat.md to bench/results (or $COMPAT_OUT); exits 1 if any set fails or is missing.
# About 1-2 minutes with a warm pip cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$root/build/compat"
results="${COMPAT_OUT:-$root/bench/results}"
mkdir -p "$work" "$results"
export PIP_DISABLE_PIP_VERSION_CHECK=1

find_python() {  # find_python 3.10: a working interpreter of that version, or nothing
  local version=$1 candidate
  for candidate in $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$version".*/bin/python 2>/dev/null | sort -V -r) \
                   "$(command -v "python$version" || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "import sys; assert sys.version.startswith('$version')" 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
}
status=0
rows=()
for entry in "3.10 runtime-lowest PY310" "3.12 runtime PY312" "3.13 runtime PY313"; do
  read -r version requirements var <<<"$entry"
  interpreter="${!var:-$(find_python "$version")}"
  if [ -z "$interpreter" ]; then
    echo "[compat] python$version not found: set $var" >&2; status=1; continue
  fi
  venv="$work/py$version"
  echo "[compat] Python $version ($requirements) in $venv" >&2
  rm -rf "$venv"
  "$interpreter" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r "requirements/$requirements.txt" >"$work/py$version.log" 2>&1 \
    && "$venv/bin/python" -m pip install -q --no-deps -r requirements/vad.txt >>"$work/py$version.log" 2>&1 \
    && "$venv/bin/python" -m pip install -q --no-deps . >>"$work/py$version.log" 2>&1 \
    || { tail -20 "$work/py$version.log" >&2; status=1; continue; }
  # run outside the checkout, so the installed package is what runs
  (cd "$work" && "$venv/bin/python" "$root/bench/runtime_parity.py" --runtime-only --models "$root/models" \
      --audio "$root/demo/demo_es.wav" --compare "$root/bench/results/runtime_reference.json" \
      --out "$work/py$version.json") || status=1
  rows+=("$work/py$version.json")
done
"${PY311:-python3}" - "$results" "${rows[@]}" <<'PY'
import datetime, json, sys
from pathlib import Path
out, runs = Path(sys.argv[1]), [json.loads(Path(p).read_text()) for p in sys.argv[2:] if Path(p).exists()]
when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
(out / "compat.json").write_text(json.dumps({"date": when, "runs": runs}, indent=1) + "\n")
lines = [f"# Runtime compatibility ({when}, `scripts/compat_check.sh`)", "",
         "Runtime-only venvs (no ROS, training imports blocked), demo audio played three times, every shipped model; "
         "largest |probability difference| against the reference run (Python 3.11, pinned set, x86-64).", "",
         "| Python | machine | numpy | onnxruntime | soundfile | soxr | utterances (silero / webrtc) | max diff fp32 | max diff int8 | parity |",
         "|---|---|---|---|---|---|---|---|---|---|"]
for run in runs:
    p, c = run["platform"], run.get("comparison", {})
    diffs = {k: v for k, v in c.get("max_abs_difference", {}).items() if not isinstance(v, str)}
    fp32 = max((v for k, v in diffs.items() if ".int8." not in k), default=float("nan"))
    int8 = max((v for k, v in diffs.items() if ".int8." in k), default=float("nan"))
    counts = " / ".join(str(len(run["vads"][b]["boundaries"])) for b in ("silero", "webrtc"))
    pk = p["packages"]
    lines.append(f"| {p['python']} | {p['machine']} | {pk['numpy']} | {pk['onnxruntime']} | {pk['soundfile']} | "
                 f"{pk['soxr']} | {counts} | {fp32:.1e} | {int8:.1e} | {'OK' if c.get('same') else 'FAILED'} |")
lines += ["", f"Tolerances: fp32 {runs[0]['comparison']['tolerance'] if runs else ''}, int8 "
          f"{runs[0]['comparison']['int8_tolerance'] if runs else ''} (ONNX Runtime's integer kernels round differently "
          "between releases)."]
(out / "compat.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
exit $status
