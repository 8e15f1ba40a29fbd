"""The HTTP/SSE gateway: a REST API, live turn streams and the web chat, per-user access."""
