"""`llmpack launch`: the router in front of vLLM replicas that share a GPU, and a standalone launcher
of such replicas. One program, two uses:

- In Kubernetes, the router only. A pod of the DRA MPS mode (render/serving.py, mps_dra_deployment)
  runs each vLLM replica as its own container, started one after another by the kubelet (native
  sidecars gated by their startup probes), and `llmpack launch --router-only --upstream URL ...`
  as its main container on the service port. Pods of the other modes run one vLLM each and no
  router. Modules: router (proxy, /healthz, /readyz), health (replica health checks), metrics (the
  merged /metrics) and replica (one replica's state).
- Outside Kubernetes, the whole: `llmpack launch --replicas N --model M -- FLAGS` starts N vLLM
  replicas one after another on one GPU, routes between them and stops them all on SIGTERM (a GPU
  host of your own, `docker run` of the serving image, bench/router_overhead.py). Adds command (the
  replicas' command lines), process (one replica's process group) and supervisor (start in order,
  watch, stop). Tested by tests/unit/launcher and, with real vLLM, tests/engine/test_router_engine.py.

The command line and its contract: launcher/cli.py.
"""
