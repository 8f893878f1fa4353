"""The web side: /healthz, /metrics, /status and the status page, from the daemon's snapshot."""
