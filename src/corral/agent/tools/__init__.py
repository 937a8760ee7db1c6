"""Tools the agent can call: each a JSON-schema'd async callable with a risk level and a timeout."""
