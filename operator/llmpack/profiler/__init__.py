"""What runs inside the profiling Job: `llmpack profile` (cli.py) sweeps batch sizes (sweep.py)
with one backend (vllm.py, simulated.py, paper.py), samples the GPU through NVML (nvml.py) and
publishes the Profile to its ConfigMap and the termination message (publish.py)."""
