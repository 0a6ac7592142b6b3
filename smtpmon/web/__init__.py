"""The HTTP side: wire format, the server and its two transports, the route table, the
`/probe` endpoint and the landing page."""
