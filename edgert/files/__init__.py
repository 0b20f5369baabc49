"""Files on disk: the GGUF reader, the loader that maps and checks a model file, the
converter from Hugging Face checkpoints, and the cache of kernel-ready weight layouts."""
