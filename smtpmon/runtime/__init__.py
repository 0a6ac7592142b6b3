"""The running daemon: the scheduler that decides when each target is probed, and the wiring
of configuration, store, scheduler and HTTP server (signals, reloads)."""
