"""The prediction API: FastAPI routes over the model service, the micro-batcher and the prediction log.

``main.create_app`` builds the app and does no I/O; ``lifespan`` starts the prediction-log writer and the
registry follower. One module per concern: ``schemas`` (request and response models), ``problems`` (the
one renderer of client errors), ``deps`` (typed dependencies read from ``app.state``), ``routes/*`` (one
router per resource), ``predict_handler`` (the predict logic) and ``fast_path`` (the raw ASGI shortcut).
"""

from housing.api.main import create_app

__all__ = ["create_app"]
