"""What operators and probes read: GET /health (liveness), /ready (readiness), /model and /metrics
(Prometheus).

Each endpoint's docstring is its description in OpenAPI (/docs).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from housing.api.deps import ServicesDep
from housing.api.responses import json_response
from housing.api.schemas import (
    AliasState,
    ChallengerInfo,
    ChallengerStatus,
    FailedVersionState,
    LogState,
    ModelInfo,
    Readiness,
    RegistryState,
    ServedModel,
    StepInfo,
)
from housing.errors import hide_local_paths, mask_text, public_uri
from housing.serving.model_service import LoadedModel

router = APIRouter()


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    """Always `{"status": "ok"}` while the process answers; for liveness probes."""
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: a production model is loaded",
    response_model=Readiness,
    responses={503: {"description": "Not ready, with the reason.", "model": Readiness}},
)
async def ready(services: ServicesDep) -> Response:
    """200 when a production model is loaded, else 503 with the reason; both describe the model, the registry
    (the version the production alias names, `missing` when it names none, and a version that failed to load:
    it is not tried again until the alias moves) and the prediction log. Credentials in URIs are masked."""
    services.update_gauges()
    model = services.model_service.current
    status = services.model_service.status
    log = services.prediction_log.status()
    failed = status.failed_version
    readiness = Readiness(
        status="ready" if model else "not ready",
        reason=None if model else hide_local_paths(services.model_service.unavailable_reason()),
        model=(
            ServedModel(name=model.name, version=model.version, loaded_at=model.loaded_at) if model else None
        ),
        registry=RegistryState(
            uri=public_uri(services.settings.tracking_uri),
            reachable=status.reachable,
            last_check=status.last_check,
            checks=status.checks,
            failed_checks=status.failed_checks,
            last_error=hide_local_paths(status.last_error) if status.last_error else None,
            alias=AliasState(
                name=services.settings.production_alias,
                version=status.alias_version,
                missing=status.alias_missing,
            ),
            failed_version=(
                FailedVersionState(
                    version=failed.version, reason=hide_local_paths(failed.reason), failed_at=failed.failed_at
                )
                if failed
                else None
            ),
        ),
        prediction_log=LogState(
            pending_rows=log.pending_rows,
            written_rows=log.written_rows,
            last_error=(
                hide_local_paths(mask_text(log.last_error, services.settings.log_database_url))
                if log.last_error
                else None
            ),
        ),
    )
    return json_response(readiness.model_dump(mode="json"), 200 if model else 503)


def steps(model: LoadedModel) -> list[StepInfo]:
    return [StepInfo.model_validate(step) for step in model.predict_path]


@router.get(
    "/model",
    summary="The served model and its challenger: versions, alias, run, training metrics, loaded-at",
    response_model=ModelInfo,
)
async def model_info(services: ServicesDep) -> Response:
    """The served model's name, version, alias, run, training metrics and recent switches; `predict_path`: for
    each pipeline step, whether compiled array arithmetic runs or the library's own code (`compiled_predict`
    is true only when every step is compiled and the compiled path was verified against the pipeline); under
    `challenger`, the version the staging alias names when it is loaded beside production (scored in shadow on
    every request, and answering `canary_percent` % of them), else null; 503 while no production model is
    loaded."""
    model = services.model_service.require()
    challenger = services.challenger()
    settings = services.settings
    info = ModelInfo(
        name=model.name,
        version=model.version,
        alias=model.alias,
        candidate=model.candidate,
        run_id=model.run_id,
        metrics=model.metrics,
        loaded_at=model.loaded_at,
        compiled_predict=model.compiled_predict,
        predict_path=steps(model),
        history=[hide_local_paths(line) for line in services.model_service.status.history],
        challenger=(
            ChallengerInfo(
                version=challenger.version,
                alias=challenger.alias,
                candidate=challenger.candidate,
                run_id=challenger.run_id,
                loaded_at=challenger.loaded_at,
                compiled_predict=challenger.compiled_predict,
                predict_path=steps(challenger),
                mode="shadow + canary" if settings.canary_percent else "shadow",
                canary_percent=settings.canary_percent,
                shadow_backlog_rows=services.shadow.backlog_rows,
            )
            if challenger
            else None
        ),
        challenger_status=ChallengerStatus(
            alias=settings.staging_alias,
            alias_version=services.challenger_service.status.alias_version,
            last_error=(
                hide_local_paths(services.challenger_service.status.last_error)
                if services.challenger_service.status.last_error
                else None
            ),
            history=[hide_local_paths(line) for line in services.challenger_service.status.history],
        ),
    )
    return json_response(info.model_dump(mode="json"))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Every metric in the Prometheus text format (aggregated over the workers when there are several)."""
    services.update_gauges()
    content, content_type = services.metrics.exposition()
    return Response(content, media_type=content_type)
