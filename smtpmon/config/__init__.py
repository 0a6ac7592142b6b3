"""Configuration files into frozen values, every error with its key path: the YAML config
(`load`), the web-config file (`webconfig`), and the one host:port grammar (`addresses`)."""
