"""The daemon (`streamd run`): its stages (source, batch, sink, recording), their wiring (pipeline), the main loop
(service) and what serves it (health, metrics, the status page, adaptation schedule, day references, systemd)."""
