"""How steps run: task runners, caching, retries, clean-up, redaction, Prefect internals."""
