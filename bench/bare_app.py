"""The bare endpoints bench/serve.py measures this API against: FastAPI routes that do nothing but what any
endpoint must.

- ``app``: POST /predict answers a constant without reading the body (the framework's ceiling);
- ``validating``: POST /predict validates the body against the same feature model the API documents (one row,
  or a list of them, as a route taking ``HousingFeatures | list[HousingFeatures]``) and answers a constant per
  row: what a plain FastAPI service costs before it predicts or logs anything.
"""

from fastapi import FastAPI

from housing.api.schemas import HousingFeatures

app = FastAPI()


@app.post("/predict")
async def predict() -> dict[str, float]:
    return {"MedHouseVal": 2.0}


validating = FastAPI()


@validating.post("/predict")
async def predict_validated(
    rows: HousingFeatures | list[HousingFeatures],
) -> dict[str, float] | list[dict[str, float]]:
    if isinstance(rows, list):
        return [{"MedHouseVal": 2.0} for _ in rows]
    return {"MedHouseVal": 2.0}
