"""The event loop (greenlets over epoll) and the thread pool for blocking name lookups: the
ground the probe engine runs on. Knows nothing of SMTP, configuration or metrics."""
