"""The supervisor (``automagik-telemetry agent``): its children as explicit state machines, how a child is
spawned, the clients' listening socket it owns, the control socket, and systemd's protocols."""
