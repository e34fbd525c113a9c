"""Redis backend vs raw redis-py (placeholder until the backend lands)."""

BACKEND_MODULE = "persistkit.backends.redis"
