"""What WPE dereverberation would cost the node: CPU per second of audio of single-channel WPE (nara-wpe's numpy
`wpe`, the settings of the offline test in issue #33: 512-point STFT, hop 128, 10 taps, delay 3, 3 iterations,
STFT and inverse included) on every 50th uem-es clip, to set beside the node's CPU per second of speech
(bench/results/performance_voice.md). nara-wpe (MIT) needs SciPy, which the robot does not install, so it lives in
its own environment:

  python3 -m venv /tmp/wpe && /tmp/wpe/bin/pip install nara-wpe==0.0.11 scipy soundfile numpy
  OPENBLAS_NUM_THREADS=1 /tmp/wpe/bin/python bench/wpe_cost.py
"""
import glob
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from nara_wpe.utils import istft, stft
from nara_wpe.wpe import wpe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "uem-es"


def main() -> None:
    paths = sorted(glob.glob(str(DATA / "**" / "*.flac"), recursive=True))[::50]
    total, cpu = 0.0, 0.0
    for path in paths:
        audio, rate = sf.read(path, dtype="float32")
        total += len(audio) / rate
        began = time.process_time()
        spectra = stft(audio[None], size=512, shift=128).transpose(2, 0, 1)
        clean = wpe(spectra, taps=10, delay=3, iterations=3, statistics_mode="full").transpose(1, 2, 0)
        np.asarray(istft(clean, size=512, shift=128))
        cpu += time.process_time() - began
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {len(paths)} uem-es clips, {total:.1f} s of audio: WPE "
          f"{1000 * cpu / total:.1f} ms of CPU per second of audio (one thread)")


if __name__ == "__main__":
    main()
