"""Speech input through Gemma 4's own audio encoder (built in the audio issue):
WAV and microphone input, resampling to 16 kHz, log-mel features, the conformer
run by onnxruntime. Knows nothing of sampling or chat."""
