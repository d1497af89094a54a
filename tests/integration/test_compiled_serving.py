"""The served production model answers through the compiled path alone (the library's predict disabled)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from housing.serving.micro_batch import Answer, MicroBatcher
from housing.serving.model_service import ModelService
from tests.helpers import held_out_rows

SQLITE = pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
"""The promise does not depend on the tracking backend: the SQLite pipeline run only."""


def refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("the library's own predict or transform ran on the serving path")


@SQLITE
def test_the_served_model_answers_through_the_compiled_path_alone(pipeline_run):
    service = ModelService(pipeline_run.settings())
    assert service.refresh()
    model = service.require()
    rows = held_out_rows(pipeline_run, 300)
    served = model.predict(rows.to_numpy(dtype=np.float64))
    np.testing.assert_allclose(served, model.pipeline.predict(rows), rtol=0, atol=1e-9)
    assert model.fast_predict is not None and all(
        step["compiled"] for step in model.predict_path
    )  # what /model says

    model.pipeline.predict = refuse
    for _, step in model.pipeline.steps:
        for method in ("predict", "transform"):
            if hasattr(step, method):
                setattr(step, method, refuse)
        if hasattr(step, "booster_"):
            step.booster_.predict = refuse
    np.testing.assert_array_equal(model.predict(rows.to_numpy(dtype=np.float64)), served)

    async def one_by_one() -> list[Answer]:  # as /predict's single rows are served: through the micro-batcher
        batcher = MicroBatcher(service)
        return list(
            await asyncio.gather(*(batcher.predict_one(row) for row in rows.to_numpy(dtype=np.float64)[:50]))
        )

    answers = asyncio.run(one_by_one())
    np.testing.assert_allclose([answer.value for answer in answers], served[:50], rtol=0, atol=1e-12)
