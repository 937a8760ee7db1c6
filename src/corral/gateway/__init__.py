"""Gateway: the OpenAI-compatible HTTP front of the whole cluster (routes, auth, routing, metrics)."""
