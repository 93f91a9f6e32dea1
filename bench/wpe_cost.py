"""What WPE dereverberation costs the node: CPU per second of audio of the encoder's front end without WPE (front
end 2, shipped), with the node's online WPE (front end 4, ser_node/inference/dereverb.py OnlineWpe) and, where
nara-wpe is installed, nara-wpe's offline numpy `wpe` (the settings of the offline test in issue #33: 512-point
STFT, hop 128, 10 taps, delay 3, 3 iterations, STFT and inverse included), on every 50th uem-es clip, one thread.
The front ends are fed as the node feeds them (blocks of VoiceStream's PUSH_SAMPLES), so their Python overhead
per call counts; set the figures beside the node's CPU per second of speech (bench/results/performance_voice.md).

  OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/wpe_cost.py
  .venv/bin/pip install nara-wpe==0.0.11   # optional: adds the offline row (MIT; needs SciPy, not on the robot)

Writes bench/results/wpe_cost.json.
"""
import glob
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ser_node.inference.voice_frontend import StreamingFrontEnd  # noqa: E402
from ser_node.inference.voice_stream import PUSH_SAMPLES  # noqa: E402
from ser_node.train.reports import write_json  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "uem-es"


def front_end(version: int):
    def run(audio: np.ndarray) -> None:
        front = StreamingFrontEnd(version)
        for start in range(0, audio.size, PUSH_SAMPLES):
            front.push(audio[start:start + PUSH_SAMPLES])
        front.finish()
    return run


def nara_dereverberate(audio: np.ndarray) -> np.ndarray:
    """nara-wpe's offline WPE with issue #33's settings, STFT and inverse included (also bench/wpe_offline.py's)."""
    from nara_wpe.utils import istft, stft
    from nara_wpe.wpe import wpe

    audio = np.asarray(audio, np.float32)
    if audio.size < 1024:  # under two STFT windows there is no reverberation to predict
        return audio
    spectra = stft(audio[None], size=512, shift=128).transpose(2, 0, 1)
    clean = wpe(spectra, taps=10, delay=3, iterations=3, statistics_mode="full").transpose(1, 2, 0)
    return np.nan_to_num(np.asarray(istft(clean, size=512, shift=128))[0, :audio.size]).astype(np.float32)


def nara_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nara_wpe") is not None


def main() -> None:
    paths = sorted(glob.glob(str(DATA / "**" / "*.flac"), recursive=True))[::50]
    clips = [sf.read(path, dtype="float32")[0] for path in paths]
    seconds = sum(c.size for c in clips) / 16000
    systems = {"front end 2 (shipped)": front_end(2), "front end 4 (front end 2 + online WPE)": front_end(4)}
    if nara_installed():
        systems["nara-wpe offline (whole utterance, 3 iterations)"] = nara_dereverberate
    cost = {name: [] for name in systems}
    for _ in range(3):  # interleaved repeats: machine noise hits every system alike; the median is reported
        for name, run in systems.items():
            began = time.process_time()
            for clip in clips:
                run(clip)
            cost[name].append(1000 * (time.process_time() - began) / seconds)
    rows = {name: float(np.median(values)) for name, values in cost.items()}
    base = rows["front end 2 (shipped)"]
    date = time.strftime("%Y-%m-%d %H:%M")
    print(f"{date}: {len(clips)} uem-es clips, {seconds:.1f} s of audio, one thread, ms of CPU per second of audio "
          f"(median of 3):")
    for name, value in rows.items():
        extra = "" if name.startswith("front end 2") else f" (+{value - base:.2f} over front end 2)"
        print(f"  {name}: {value:.2f}{extra}")
    write_json(ROOT / "bench" / "results" / "wpe_cost.json",
               {"date": date, "clips": len(clips), "audio_s": seconds, "push_samples": PUSH_SAMPLES,
                "ms_cpu_per_s_audio": rows, "repeats": cost})


if __name__ == "__main__":
    main()
