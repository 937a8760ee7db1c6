"""Engine: llama-server child processes (spawn, health, slots, metrics, restart, stop)."""
