"""The HTTP layer: routers, the fast paths, middleware, problem details. It reaches the rest
through `Services` (app/services/container.py) and nothing else of the app's state."""
