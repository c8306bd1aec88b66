"""The HTTP listener: /metrics, /healthz, /readyz and /submit, with TLS and basic auth."""
