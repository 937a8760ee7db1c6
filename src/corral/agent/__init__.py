"""The agent: declarative workflows, their runner and durable history, memory and tools."""
