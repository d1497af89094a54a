"""Stage 5: the prediction API. Run it with `uvicorn app:app` (or `make serve`).

Serves models:/CaliforniaHousing@production, follows the alias without restarts, logs every prediction to
the prediction log, takes ground truth at /feedback. Docs at /docs. Settings from the environment
(HOUSING_*, MLFLOW_TRACKING_URI); see docs/serving.md and docs/settings.md.
"""

from housing.api.main import create_app

app = create_app()
