"""`ser_enroll_voice`: enrol the robot's own voice from a few of its text-to-speech sentences.

  ser_enroll_voice tts_01.wav tts_02.wav tts_03.wav --out ~/.ros/ser_self_voice.npz
  ros2 run ser_node ser_node --ros-args -p self_voice_file:=$HOME/.ros/ser_self_voice.npz

Each file is decoded, cut into utterances as the node cuts its audio, and embedded by the model's own graph (the
default model unless --model); the speaker embeddings are written with the model's id. Use the
sentences as the robot's loudspeaker and microphone give them (record them through the robot if you can). The node
then drops utterances at least `self_voice_threshold` similar to it. Needs a voice-encoder model (the default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def embeddings_of(paths: list[Path], model: str) -> tuple[np.ndarray, str]:
    from ..audio.decode import load_audio
    from ..audio.segmenter import Segmenter
    from ..audio.stream import StreamProcessor
    from ..audio.vad import make_vad
    from ..inference.classifier import Classifier
    from ..inference.model_file import default_model_path

    classifier = Classifier(model or default_model_path())
    if not classifier.is_voice_model:
        raise ValueError(f"{classifier.path}: not a voice-encoder model (no speaker embedding)")
    out = []
    for path in paths:
        for utterance in StreamProcessor(Segmenter(make_vad("webrtc"))).feed_recording(load_audio(path)):
            out.append(classifier.infer(classifier.prepare([utterance.audio]))[0].speaker_embedding)
    if not out:
        raise ValueError("no speech found in the files given")
    return np.array(out), classifier.model_id


def main(argv: list[str] | None = None) -> int:
    from ..audio.decode import AudioError
    from ..inference.model_file import ModelFileError
    from ..inference.self_voice import SelfVoice

    parser = argparse.ArgumentParser(prog="ser_enroll_voice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="+", type=Path, help="the robot's own TTS sentences (WAV, FLAC, ...)")
    parser.add_argument("--out", type=Path, required=True, help="enrolment file to write (.npz)")
    parser.add_argument("--model", default="", help="model the node runs (default: the shipped default)")
    args = parser.parse_args(argv)
    try:
        embeddings, model_id = embeddings_of(args.audio, args.model)
    except (AudioError, ModelFileError, ValueError) as error:
        print(f"ser_enroll_voice: {error}", file=sys.stderr)
        return 2
    voice = SelfVoice.enrol(embeddings, model_id)
    voice.save(args.out)
    print(f"{args.out}: {voice.sentences} utterance(s) of the robot's voice, model {model_id}; lowest similarity of "
          f"an enrolled utterance to its nearest other one {voice.within:.2f} (keep self_voice_threshold below it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
