"""One router per resource: ``predict`` (POST /predict), ``feedback`` (POST /feedback), ``operations``
(GET /health, /ready, /model, /metrics) and ``admin`` (POST /admin/reload)."""
