"""A generic controller runtime, in the shape of client-go and controller-runtime, that knows
nothing of llmpack: an API client with error classification (kube.py), a watch cache (store.py),
a work queue with per-item backoff (workqueue.py), Lease leader election (leader.py), the client
Protocol both the real client and its in-memory double satisfy (client.py, fake.py), and their
metrics. With controller/ it is the only code that talks to the API server; the import contracts
in pyproject.toml keep it free of llmpack's own modules."""
