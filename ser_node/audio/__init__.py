"""Sound in: decoding, the two audio message wire formats, streaming, VAD, segmentation."""
