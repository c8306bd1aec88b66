"""The process that wires the stages: config, daemon, feeds, sinks, systemd notification."""
