"""Speech input for Gemma 4's own audio encoder. Knows nothing of sampling or chat.

- `files`: WAV files of any common rate, depth and channel count, or arrays, as 16 kHz
  mono float32 clips, with clear errors for what cannot be used;
- `resample`: rational-factor Kaiser-windowed sinc resampling;
- `features`: log-mel features exactly as transformers' Gemma4AudioFeatureExtractor.

The conformer encoder (run by onnxruntime), streaming and the voice assistant are to come.
"""
