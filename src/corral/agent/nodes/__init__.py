"""Workflow node types: the Node seam (base) and the shipped library."""
