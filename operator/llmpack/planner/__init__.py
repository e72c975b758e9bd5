"""The one decision of llmpack: from an LLMDeployment's spec, its profile (or none yet) and what the
cluster offers, either a profiling plan or a serving plan with its explanation. Pure: no kopf, no
Kubernetes client; the operator, `llmpack plan` and `llmpack advise` call it."""
