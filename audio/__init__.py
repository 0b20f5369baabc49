"""Speech for Gemma 4's own audio encoder. Knows nothing of sampling or chat.

- `files`: audio files (WAV, FLAC, OGG, MP3, ...) of any rate, depth and channel count, or
  arrays, as 16 kHz mono float32 clips (soundfile, soxr), with clear errors for what cannot
  be used;
- `features`: log-mel features exactly as transformers' Gemma4AudioFeatureExtractor;
- `encoder`: the conformer encoder as an ONNX graph run by onnxruntime;
- `vad`: voice-activity detection, cutting a stream into utterances.
"""
