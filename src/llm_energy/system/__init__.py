"""Operating-system process control (process trees, parent-death signals, the server guard).
Imports nothing of llm_energy above it."""
