"""The SMTP probe engine: reply codes, result values, the client (sockets, TLS, deadlines),
the session (`session.run_probe`) and the transcript. Imports neither PyYAML nor
prometheus_client: it takes plain values and returns frozen ones."""
