"""Contract tests of every route with TestClient, against the registry the real pipeline filled.

POST /predict is answered by the fast path (housing.api.fast_path) in the default app; the documented route
answers it when the app is built with fast_path=False, and the two must answer every request alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from housing.api.fast_path import PredictFastPath
from housing.api.main import create_app
from housing.config.settings import Settings
from housing.data.artifacts import load_pickle
from housing.schema import EXAMPLE_REQUEST, FEATURE_NAMES
from housing.store.tables import make_engine
from tests.helpers import wait_for
from tests.server import FEEDBACK_HEADERS, FEEDBACK_TOKEN

TOKEN = "test-admin-token-0123456789abcdefghij"


def wait_ready(client: TestClient) -> dict:
    response = wait_for(lambda: (found := client.get("/ready")).status_code == 200 and found)
    assert response, f"not ready: {client.get('/ready').json()}"
    return response.json()


@pytest.fixture(scope="module")
def served(pipeline_run):
    settings = pipeline_run.settings(
        prediction_log_url=pipeline_run.backend.new_log_url("contract"),
        admin_token=TOKEN,
        feedback_token=FEEDBACK_TOKEN,
        max_batch_rows=50,
        reload_interval=0.5,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, settings


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def twins(pipeline_run):
    """The same app (same model, settings and limits) with the fast path and without it, each on a log of its
    own that no label reaches: labels move a version's interval, so the two answer alike only while their
    logs hold the same labels."""

    def app_settings(label: str):
        return pipeline_run.settings(
            prediction_log_url=pipeline_run.backend.new_log_url(label),
            admin_token=TOKEN,
            feedback_token=FEEDBACK_TOKEN,
            max_batch_rows=50,
            reload_interval=0.5,
        )

    with (
        TestClient(create_app(app_settings("fast"))) as fast,
        TestClient(create_app(app_settings("routed"), fast_path=False)) as routed,
    ):
        wait_ready(fast)
        wait_ready(routed)
        yield fast, routed


@pytest.fixture(scope="module")
def test_rows(pipeline_run) -> pd.DataFrame:
    return load_pickle(pipeline_run.artifacts_dir / "split" / "X_test.pkl")


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"]["name"] == "CaliforniaHousing"
    assert ready["registry"]["reachable"] is True


def test_single_prediction(client, pipeline_run):
    response = client.post("/predict", json=EXAMPLE_REQUEST)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"request_id", "MedHouseVal", "price_usd", "interval", "model_name", "model_version"}
    production = pipeline_run.load_version()
    assert body["MedHouseVal"] == pytest.approx(
        production.predict(pd.DataFrame([EXAMPLE_REQUEST]))[0], rel=1e-12
    )
    interval = body["interval"]
    assert interval["level"] == 0.9 and interval["low"] < body["MedHouseVal"] < interval["high"]
    assert interval["low_usd"] == pytest.approx(interval["low"] * 100_000, abs=0.01)
    assert interval["high_usd"] == pytest.approx(interval["high"] * 100_000, abs=0.01)
    assert body["price_usd"] == pytest.approx(body["MedHouseVal"] * 100_000, abs=0.01)
    assert (
        body["model_name"] == "CaliforniaHousing"
        and body["model_version"] == client.get("/model").json()["version"]
    )


def test_batch_is_served_exactly_as_trained_in_order(client, pipeline_run, test_rows):
    rows = test_rows.iloc[:40]
    response = client.post("/predict", json=rows.to_dict(orient="records"))
    assert response.status_code == 200
    body = response.json()
    production = pipeline_run.load_version()
    expected = production.predict(rows)
    assert [p["MedHouseVal"] for p in body["predictions"]] == pytest.approx(list(expected), rel=1e-12)
    assert len({p["request_id"] for p in body["predictions"]}) == 40


def test_integers_are_numbers(client):
    body = {**EXAMPLE_REQUEST, "HouseAge": 28, "Population": 1500}
    assert client.post("/predict", json=body).status_code == 200


def bad(**changes):
    body = dict(EXAMPLE_REQUEST)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (bad(MedInc=...), 422, "MedInc", "Field required"),
        (bad(HouseAge="28"), 422, "HouseAge", "must be a JSON number, not a string"),
        (bad(AveRooms=True), 422, "AveRooms", "valid number"),
        (bad(AveRooms=None), 422, "AveRooms", "valid number"),
        (bad(AveRooms=[5]), 422, "AveRooms", "valid number"),
        (bad(Population=-5), 422, "Population", "greater than 0"),
        (bad(AveOccup=0), 422, "AveOccup", "greater than 0"),
        (bad(Latitude=45.0), 422, "Latitude", ">= 32.4 and <= 42.1"),
        (bad(Longitude=-100.0), 422, "Longitude", ">= -124.5 and <= -114"),
        (bad(MedInc=1e6), 422, "MedInc", "<= 25"),
        (bad(medinc=3.5), 422, "medinc", "unknown field"),
    ],
)
def test_single_row_validation(client, body, status, field, words):
    response = client.post("/predict", json=body)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert f"field {field}" in detail and words in detail


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_by_field(client, literal):
    others = (
        '"HouseAge": 28, "AveRooms": 5.0, "AveBedrms": 1.04, "Population": 1500, "AveOccup": 3.0, "Latitude":'
        ' 34.2, "Longitude": -118.3'
    )
    raw = f'{{"MedInc": {literal}, {others}}}'
    response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "field MedInc" in response.json()["detail"] and "finite" in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        ('{"MedInc": 3.5,', 400, "not valid JSON"),
        ("", 400, "body is empty"),
        ("42", 422, "JSON object with the 8 features"),
        ('"text"', 422, "JSON object with the 8 features"),
        ("[]", 422, "batch is empty"),
    ],
)
def test_malformed_bodies(client, raw, status, words):
    response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == status and words in response.json()["detail"]


def test_batch_errors_name_the_row(client):
    rows = [EXAMPLE_REQUEST, bad(Latitude=10.0), EXAMPLE_REQUEST]
    response = client.post("/predict", json=rows)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("row 1, field Latitude")
    assert response.json()["errors"][0]["row"] == 1


def test_batch_over_the_limit(client, served):
    limit = served[1].max_batch_rows
    response = client.post("/predict", json=[EXAMPLE_REQUEST] * (limit + 1))
    assert response.status_code == 413 and f"the limit is {limit}" in response.json()["detail"]
    assert client.post("/predict", json=[EXAMPLE_REQUEST] * limit).status_code == 200


def test_feedback_lifecycle(client):
    request_id = client.post("/predict", json=EXAMPLE_REQUEST).json()["request_id"]
    first = client.post("/feedback", json={"request_id": request_id, "actual": 2.5}, headers=FEEDBACK_HEADERS)
    assert first.status_code == 201 and first.json() == {"request_id": request_id, "status": "recorded"}
    again = client.post("/feedback", json={"request_id": request_id, "actual": 2.5}, headers=FEEDBACK_HEADERS)
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    conflict = client.post(
        "/feedback", json={"request_id": request_id, "actual": 3.0}, headers=FEEDBACK_HEADERS
    )
    assert conflict.status_code == 409 and "already has a different label" in conflict.json()["detail"]
    unknown = client.post("/feedback", json={"request_id": "0" * 32, "actual": 2.0}, headers=FEEDBACK_HEADERS)
    assert unknown.status_code == 404
    retry = int(unknown.headers["Retry-After"])  # its prediction may not be logged yet: when to ask again
    assert retry >= 1 and f"retry after {retry} s" in unknown.json()["detail"]


def metric(client: TestClient, name: str, **labels: str) -> float | None:
    """One sample of GET /metrics (None when the series is not exposed)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return float(sample.value)
    return None


def test_feedback_outcomes_micro_batches_and_the_logs_state_are_on_metrics(client):
    outcomes = ("created", "unchanged", "conflict", "unknown_request")
    before = {
        outcome: metric(client, "housing_feedback_total", outcome=outcome) or 0.0 for outcome in outcomes
    }
    batches_before = metric(client, "housing_microbatch_rows_count") or 0.0
    request_id = client.post("/predict", json=EXAMPLE_REQUEST).json()["request_id"]
    for actual in (2.5, 2.5, 3.0):  # created, unchanged, conflict
        client.post("/feedback", json={"request_id": request_id, "actual": actual}, headers=FEEDBACK_HEADERS)
    client.post(
        "/feedback", json={"request_id": "f" * 32, "actual": 2.0}, headers=FEEDBACK_HEADERS
    )  # unknown
    after = {outcome: metric(client, "housing_feedback_total", outcome=outcome) for outcome in outcomes}
    assert {outcome: (after[outcome] or 0.0) - before[outcome] for outcome in outcomes} == dict.fromkeys(
        outcomes, 1.0
    )
    assert (
        metric(client, "housing_microbatch_rows_count") or 0.0
    ) >= batches_before + 1  # the single row went through the batcher
    log = wait_for(
        lambda: (found := client.get("/ready").json()["prediction_log"])["pending_rows"] == 0 and found
    )
    assert log, "the log did not catch up"  # then the gauges say what the log says
    assert metric(client, "housing_prediction_log_pending_rows") == 0.0
    assert metric(client, "housing_prediction_log_rows_total") == log["written_rows"] > 0
    assert metric(client, "housing_prediction_log_failed_flushes_total") == 0.0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"request_id": "abc"}, "field actual: Field required"),
        ({"request_id": "abc", "actual": -1.0}, "greater than 0"),
        ({"request_id": "abc", "actual": 0.0}, "greater than 0"),
        ({"request_id": "abc", "actual": 101.0}, "less than or equal to 100"),
        ({"request_id": "abc", "actual": "2.0"}, "not a string"),
        (
            {"request_id": "abc", "actual": 2.0, "extra": 1},
            "unknown field (expected only request_id, actual)",
        ),
    ],
)
def test_feedback_validation(client, body, words):
    response = client.post("/feedback", json=body, headers=FEEDBACK_HEADERS)
    assert response.status_code == 422 and words in response.json()["detail"]


def test_feedback_malformed_json(client):
    response = client.post(
        "/feedback", content="{nope", headers={**FEEDBACK_HEADERS, "Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_model_route(client, pipeline_run):
    body = client.get("/model").json()
    assert body["name"] == "CaliforniaHousing" and body["alias"] == "production"
    assert body["run_id"] and {"r2", "rmse"} <= set(body["metrics"]) and body["loaded_at"]
    assert body["candidate"]
    assert body["challenger"] is None  # staging names the production version after the pipeline
    assert [step["name"] for step in body["predict_path"]][-1] == "model" and body["compiled_predict"] is True
    assert all(step["compiled"] for step in body["predict_path"]), body[
        "predict_path"
    ]  # no library predict behind "compiled"
    metrics = client.get("/metrics").text
    for step in body["predict_path"]:
        assert (
            f'housing_model_predict_path{{alias="production",kind="{step["kind"]}",path="compiled",'
            f'step="{step["name"]}",'
            f'version="{body["version"]}"}} 1.0' in metrics
        )


def test_metrics_route(client):
    client.post("/predict", json=EXAMPLE_REQUEST)
    client.post("/predict", json=bad(MedInc=...))
    text_body = client.get("/metrics").text
    version = client.get("/model").json()["version"]
    assert 'housing_http_requests_total{method="POST",route="/predict",status="200"}' in text_body
    assert 'housing_http_requests_total{method="POST",route="/predict",status="422"}' in text_body
    assert (
        'housing_http_request_duration_seconds_bucket{le="0.025",method="POST",route="/predict",status="200"}'
        in text_body
    )
    assert "housing_prediction_value_bucket" in text_body
    assert (
        f'housing_model_info{{alias="production",name="CaliforniaHousing",version="{version}"}} 1.0'
        in text_body
    )
    assert "housing_prediction_log_rows_total" in text_body


def test_admin_reload_needs_the_token(client):
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 403
    response = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json()["changed"] is False


def test_docs_describe_fields_units_and_an_example(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    schema = spec["components"]["schemas"]["HousingFeatures"]
    assert "tens of thousands of US dollars" in schema["properties"]["MedInc"]["description"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["single district"]["value"] == EXAMPLE_REQUEST


def test_every_prediction_is_logged(served, test_rows):
    client, settings = served
    engine = make_engine(settings.log_database_url)
    services = client.app.state.services
    services.prediction_log.flush()
    with engine.connect() as connection:
        before = connection.execute(text("select count(*) from predictions")).scalar_one()
    ids = [client.post("/predict", json=EXAMPLE_REQUEST).json()["request_id"] for _ in range(5)]
    batch = client.post("/predict", json=test_rows.iloc[:7].to_dict(orient="records")).json()["predictions"]
    services.prediction_log.flush()
    with engine.connect() as connection:
        after = connection.execute(text("select count(*) from predictions")).scalar_one()
        row = (
            connection.execute(
                text("select * from predictions where request_id = :id"), {"id": batch[3]["request_id"]}
            )
            .mappings()
            .one()
        )
    engine.dispose()
    assert after - before == 12
    assert [row[name] for name in FEATURE_NAMES] == pytest.approx(
        test_rows.iloc[3][list(FEATURE_NAMES)].tolist()
    )
    assert row["prediction"] == pytest.approx(batch[3]["MedHouseVal"]) and row["latency_ms"] > 0
    assert not math.isnan(row["latency_ms"]) and len(set(ids)) == 5


def test_admin_disabled_without_a_token(pipeline_run):
    settings = pipeline_run.settings(
        prediction_log_url=pipeline_run.backend.new_log_url("admin"), feedback_token=FEEDBACK_TOKEN
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403 and "HOUSING_ADMIN_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "route"])
def test_fresh_registry_starts_and_answers_503(tmp_path, fast_path):
    settings = Settings(
        artifacts_dir=tmp_path / "artifacts",
        tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}",
        reload_interval=0.2,
        feedback_token=FEEDBACK_TOKEN,
    )
    with TestClient(create_app(settings, fast_path=fast_path)) as client:
        wait_for(lambda: client.get("/ready").json()["registry"]["last_check"] is not None)
        ready = client.get("/ready")
        assert ready.status_code == 503 and "run the pipeline" in ready.json()["reason"]
        predict = client.post("/predict", json=EXAMPLE_REQUEST)
        assert predict.status_code == 503 and "run the pipeline" in predict.json()["detail"]
        assert predict.headers["retry-after"] == "0" and predict.headers["content-type"] == "application/json"
        model = client.get("/model")
        assert model.headers["retry-after"] == "0" and model.json()["detail"] == predict.json()["detail"]
        assert client.post("/predict", json=[EXAMPLE_REQUEST]).status_code == 503
        assert client.get("/model").status_code == 503
        assert client.get("/health").status_code == 200


# --- the fast path and the documented route answer alike -------------------------------------------------
def without_request_ids(body: Any) -> Any:
    """A response body with every request_id value (random) replaced by its length."""
    if isinstance(body, dict):
        return {
            key: len(value) if key == "request_id" else without_request_ids(value)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [without_request_ids(item) for item in body]
    return body


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    """Status, every header (content-type, content-length, retry-after...) and the body without its request
    ids."""
    return response.status_code, sorted(response.headers.multi_items()), without_request_ids(response.json())


SAME_ANSWER_BODIES = {
    "single row": json.dumps(EXAMPLE_REQUEST),
    "integers": json.dumps({**EXAMPLE_REQUEST, "HouseAge": 28, "Population": 1500}),
    "batch": json.dumps(
        [EXAMPLE_REQUEST, {**EXAMPLE_REQUEST, "MedInc": 8.3, "Latitude": 37.88, "Longitude": -122.23}]
    ),
    "batch at the limit": json.dumps([EXAMPLE_REQUEST] * 50),
    "malformed JSON": '{"MedInc": 3.5,',
    "not UTF-8": b"\xff\xfe{}",
    "empty body": "",
    "blank body": "  \n",
    "unknown field": json.dumps(bad(medinc=3.5)),
    "missing field": json.dumps(bad(MedInc=...)),
    "out of range": json.dumps(bad(Latitude=45.0)),
    "string number": json.dumps(bad(HouseAge="28")),
    "NaN literal": json.dumps(EXAMPLE_REQUEST).replace("3.5", "NaN"),
    "not an object": "42",
    "empty batch": "[]",
    "bad row in a batch": json.dumps([EXAMPLE_REQUEST, bad(Latitude=10.0, medinc=1.0)]),
    "over the batch limit": json.dumps([EXAMPLE_REQUEST] * 51),
}


def test_the_fast_path_and_the_documented_route_are_different_code_paths(twins):
    fast, routed = twins
    assert any(middleware.cls is PredictFastPath for middleware in fast.app.user_middleware)
    assert not any(middleware.cls is PredictFastPath for middleware in routed.app.user_middleware)


@pytest.mark.parametrize("raw", list(SAME_ANSWER_BODIES.values()), ids=list(SAME_ANSWER_BODIES))
def test_the_fast_path_and_the_documented_route_answer_alike(twins, raw):
    headers = {"Content-Type": "application/json"}
    fast = twins[0].post("/predict", content=raw, headers=headers)
    routed = twins[1].post("/predict", content=raw, headers=headers)
    assert comparable(fast) == comparable(routed)
    assert fast.headers["content-type"] == "application/json"
    assert fast.status_code in (200, 400, 413, 422), fast.text


ORIGINAL_QUERY = (
    "MedInc=3.5&HouseAge=28&AveRooms=5.0&AveBedrms=1.04&Population=1500"
    "&AveOccup=3.0&Latitude=34.2&Longitude=-118.3"
)
"""The original report's documented request: the 8 features as query parameters, an empty body."""

SAME_ANSWER_QUERIES = {
    "the original report's request": (ORIGINAL_QUERY, ""),
    "query and body": (ORIGINAL_QUERY, json.dumps(EXAMPLE_REQUEST)),
    "not a number": (ORIGINAL_QUERY.replace("HouseAge=28", "HouseAge=28y"), ""),
    "decimal comma": (ORIGINAL_QUERY.replace("MedInc=3.5", "MedInc=3,5"), ""),
    "nan": (ORIGINAL_QUERY.replace("MedInc=3.5", "MedInc=nan"), ""),
    "overflow": (ORIGINAL_QUERY.replace("MedInc=3.5", "MedInc=1e999"), ""),
    "out of range": (ORIGINAL_QUERY.replace("Latitude=34.2", "Latitude=45"), ""),
    "missing field": (ORIGINAL_QUERY.replace("&Longitude=-118.3", ""), ""),
    "unknown field": (ORIGINAL_QUERY + "&medinc=3.5", ""),
    "given twice": (ORIGINAL_QUERY + "&MedInc=4", ""),
    "not name=value": ("MedInc", ""),
}


@pytest.mark.parametrize(("query", "raw"), list(SAME_ANSWER_QUERIES.values()), ids=list(SAME_ANSWER_QUERIES))
def test_query_parameters_answer_alike_on_both_paths(twins, query, raw):
    fast = twins[0].post(f"/predict?{query}", content=raw)
    routed = twins[1].post(f"/predict?{query}", content=raw)
    assert comparable(fast) == comparable(routed)
    assert fast.status_code in (200, 400, 422), fast.text


def test_the_original_reports_query_request_predicts_like_the_json_body(client):
    by_query = client.post(f"/predict?{ORIGINAL_QUERY}", content=b"", headers={"accept": "application/json"})
    by_body = client.post("/predict", json=EXAMPLE_REQUEST)
    assert by_query.status_code == 200, by_query.text
    assert by_query.json()["MedHouseVal"] == by_body.json()["MedHouseVal"]
    assert by_query.json()["model_version"] == by_body.json()["model_version"]


@pytest.mark.parametrize(
    ("query", "raw", "status", "words"),
    [
        (
            ORIGINAL_QUERY,
            json.dumps(EXAMPLE_REQUEST),
            400,
            "either as query parameters with an empty body or as a JSON body, not both",
        ),
        (
            ORIGINAL_QUERY.replace("HouseAge=28", "HouseAge=28y"),
            "",
            422,
            "query parameter HouseAge: '28y' is not a number",
        ),
        (
            ORIGINAL_QUERY.replace("MedInc=3.5", "MedInc=nan"),
            "",
            422,
            "query parameter MedInc: 'nan' is not a number",
        ),
        (ORIGINAL_QUERY.replace("Latitude=34.2", "Latitude=45"), "", 422, "field Latitude"),
        (ORIGINAL_QUERY.replace("&Longitude=-118.3", ""), "", 422, "field Longitude: Field required"),
        (ORIGINAL_QUERY + "&medinc=3.5", "", 422, "field medinc: unknown field"),
        (ORIGINAL_QUERY + "&MedInc=4", "", 422, "query parameter MedInc: given twice"),
    ],
)
def test_query_parameter_errors_name_the_field(client, query, raw, status, words):
    response = client.post(f"/predict?{query}", content=raw)
    assert response.status_code == status and words in response.json()["detail"], response.text


def test_docs_describe_the_query_parameters(client):
    parameters = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["parameters"]
    query = {p["name"] for p in parameters if p["in"] == "query"}
    assert query == set(FEATURE_NAMES)
    assert any(p["name"] == "X-Routing-Key" and p["in"] == "header" for p in parameters)
