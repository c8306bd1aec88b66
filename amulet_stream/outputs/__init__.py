"""States out: JSON lines and progress, Prometheus metrics, evidence clips, plots, MQTT."""
