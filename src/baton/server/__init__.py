"""HTTP: the ASGI app, routes, error mapping, OpenAPI."""
