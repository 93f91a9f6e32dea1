#!/usr/bin/env bash
# Re-creates demo/demo_es.wav from espeak-ng's Spanish voice (apt-get install espeak-ng). Needs the venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp=$(mktemp -d)
espeak-ng -v es -s 190 -p 70 -a 160 -w "$tmp/1.wav" "¡Qué alegría verte otra vez! Hoy es un día estupendo."
espeak-ng -v es -s 120 -p 25 -a 80 -w "$tmp/2.wav" "Me siento muy cansado, y un poco triste esta tarde."
espeak-ng -v es -s 210 -p 60 -a 200 -w "$tmp/3.wav" "¡No, no quiero hacer eso ahora mismo! ¡Déjame!"
espeak-ng -v es -s 160 -p 50 -a 120 -w "$tmp/4.wav" "La reunión empieza a las diez en la sala grande."
PYTHONPATH="$root" "$root/.venv/bin/python" - "$tmp" "$root/demo/demo_es.wav" <<'PY'
import sys
import numpy as np
import soundfile as sf
from ser_node.audio.decode import load_audio
parts = [np.zeros(8000, np.float32)]
for i in range(1, 5):
    x = load_audio(f"{sys.argv[1]}/{i}.wav")
    parts += [x * (0.5 / max(1e-3, np.abs(x).max())), np.zeros(16000, np.float32)]
sf.write(sys.argv[2], np.concatenate(parts), 16000, subtype="PCM_16")
PY
rm -r "$tmp"
