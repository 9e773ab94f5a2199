"""The HTTP service: app, auth, micro-batching, audit store, metrics."""
