"""edgert's local HTTP server: OpenAI's and Ollama's routes over one model (edgert serve)."""

from edgert.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
