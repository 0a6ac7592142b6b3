"""Results into Prometheus text: the store of latest results and counts, the exposition of
targets, and the exporter's own metrics. Knows nothing of sockets."""
