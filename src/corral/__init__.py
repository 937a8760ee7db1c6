"""Corral: one private, offline AI assistant from a pile of old PCs."""
