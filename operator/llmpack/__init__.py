"""llmpack: profile small LLMs, pick the batch size that reaches the throughput plateau, and pack
memory-capped vLLM replicas onto each GPU (MPS or MIG)."""

__version__ = "0.1.0"
