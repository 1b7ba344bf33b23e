"""The HTTP service: app factory, extensions, blueprints with their OpenAPI, Prometheus metrics, gunicorn config."""
