"""llm-energy: energy, latency and throughput of LLM inference, measured honestly."""

__version__ = "0.1.0"
