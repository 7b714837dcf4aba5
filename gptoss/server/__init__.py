"""The OpenAI-compatible HTTP server: request and response shapes only; no tensors here."""
