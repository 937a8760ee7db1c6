"""Agent memory: a per-session short-term window and a long-term semantic store."""
