"""The framework's ceiling for bench/serve.py: a FastAPI endpoint that returns a constant."""

from fastapi import FastAPI

app = FastAPI()


@app.post("/predict")
async def predict() -> dict[str, float]:
    return {"MedHouseVal": 2.0}
