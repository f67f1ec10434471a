"""KV-cache sessions: slot files saved before a model stops and restored when it is back, and named sessions."""
