"""Prompt evolution: an append-only archive of prompt variants, YAML test suites, staged evaluation
through the real agent workflow, reflective mutation, parent selection and promotion."""
