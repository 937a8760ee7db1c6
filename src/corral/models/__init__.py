"""Models: the catalog of bundled and local GGUF files, their metadata, and what fits a machine."""
