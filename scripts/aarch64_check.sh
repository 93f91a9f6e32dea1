#!/usr/bin/env bash
# aarch64 check, one command: the robot's path without ROS (bench/runtime_parity.py: demo audio -> StreamProcessor
# -> Segmenter with Silero and WebRTC -> every shipped model) in a Debian 12 arm64 root under qemu, compared with
# the x86-64 reference run (bench/results/runtime_reference.json). Built from Debian packages (debootstrap,
# qemu-user-static) and PyPI's aarch64 wheels, which pip downloads on the host (--platform). Needs root (chroot).
# Emulation is ~100x slower than native: this checks correctness, not speed. About 10 minutes the first time
# (the root is kept in build/aarch64 and reused). Writes bench/results/aarch64.json and aarch64.md.
#   QEMU_CPU (default cortex-a76, the nearest to a Jetson Orin's Cortex-A78AE)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$root/build/aarch64"
target="$work/debian12-arm64"
results="${AARCH64_OUT:-$root/bench/results}"
say() { printf '[aarch64] %s\n' "$*" >&2; }
mkdir -p "$work" "$results"

if ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/qemu-aarch64-static ]; then
  say "installing debootstrap and qemu-user-static (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static binfmt-support >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

if [ ! -f "$target/.ready" ]; then
  say "debootstrap: Debian 12 arm64 (minbase + python3) into $target"
  rm -rf "$target"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$target" \
    http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  touch "$target/.ready"
fi

say "downloading aarch64 wheels for cp311 (the root's Python) on the host"
rm -rf "$work/wheels" && mkdir -p "$work/wheels"
platforms=(--platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_27_aarch64
           --platform manylinux_2_28_aarch64)
python3 -m pip download -q --only-binary=:all: --implementation cp --python-version 3.11 "${platforms[@]}" \
  -d "$work/wheels" -r requirements/runtime.txt
python3 -m pip download -q --no-deps -d "$work/wheels" -r requirements/vad.txt
python3 -m pip wheel -q --no-deps -w "$work/wheels" . 2>/dev/null  # ser_node is pure Python

say "copying the check into the root"
rm -rf "$target/opt/ser" && mkdir -p "$target/opt/ser/results"
cp -r "$work/wheels" models demo bench/runtime_parity.py bench/results/runtime_reference.json "$target/opt/ser/"
# Under qemu 7.2 onnxruntime segfaults reading the host's x86 /proc/cpuinfo: show it an ARM one.
cat > "$work/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 62.50
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x4
CPU part	: 0xd0b
CPU revision	: 1

CPU
cleanup() { umount "$target/proc/cpuinfo" 2>/dev/null || true; umount "$target/proc" 2>/dev/null || true; }
trap cleanup EXIT
mount -t proc proc "$target/proc"
mount --bind "$work/cpuinfo" "$target/proc/cpuinfo"
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
say "installing the wheels and running the check under qemu ($QEMU_CPU)"
status=0
chroot "$target" /bin/bash -euc '
  cd /opt/ser
  rm -rf venv && python3 -m venv venv
  venv/bin/pip install -q --no-index --find-links wheels numpy onnxruntime soundfile soxr webrtcvad-wheels
  venv/bin/pip install -q --no-index --no-deps wheels/silero_vad-*.whl wheels/ser_node-*.whl
  venv/bin/python runtime_parity.py --runtime-only --models models --audio demo/demo_es.wav \
    --compare runtime_reference.json --out results/aarch64.json
' || status=$?
cp "$target/opt/ser/results/aarch64.json" "$results/aarch64.json" 2>/dev/null || true
python3 - "$results" "$QEMU_CPU" <<'PY'
import datetime, json, sys
from pathlib import Path
out = Path(sys.argv[1])
run = json.loads((out / "aarch64.json").read_text())
run["date"], run["qemu_cpu"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), sys.argv[2]
(out / "aarch64.json").write_text(json.dumps(run, indent=1) + "\n")
p, c = run["platform"], run["comparison"]
lines = [f"# aarch64 parity ({run['date']}, `scripts/aarch64_check.sh`)", "",
         f"Debian 12 arm64 root under qemu-user-static (CPU model {run['qemu_cpu']}), Python {p['python']}, "
         f"PyPI aarch64 wheels: " + ", ".join(f"{k} {v}" for k, v in p["packages"].items() if v) + ".",
         "The robot's path without ROS on the demo audio (played three times), against the x86-64 reference run.", "",
         "| VAD / model | max abs probability difference |", "|---|---|"]
lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.1e}'} |" for k, v in c["max_abs_difference"].items()]
counts = {b: len(v["boundaries"]) for b, v in run["vads"].items()}
lines += ["", f"Utterances {counts}, boundaries equal to x86-64's; parity **{'OK' if c['same'] else 'FAILED'}** "
          f"(tolerance fp32 {c['tolerance']}, int8 {c['int8_tolerance']})."]
(out / "aarch64.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
exit $status
