"""Moving the production alias: by compare-and-set, recorded in the production ledger, and rolled back in one
step.

:func:`move_production` is the one place that sets ``production``. It re-reads the alias first and refuses
(:class:`ProductionMoved`) when it no longer names the version the caller decided from, so a decision made
on stale state never lands. MLflow has no atomic compare-and-set on aliases: the re-read is a check, and
the mutual exclusion comes from the caller holding :data:`housing.store.locks.RETRAIN_LOCK`. :func:`rollback`
takes that lock itself and moves production back to the version the ledger says came before.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from housing.config import Settings
from housing.errors import UserError
from housing.registry.ledger import (
    ROLLBACK_REASON,
    LedgerEntry,
    create_ledger_table,
    previous_production,
    read_history,
    record_change,
)
from housing.store.locks import RETRAIN_LOCK, describe_holder, held_lock
from housing.store.tables import opened_engine

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


class ProductionMoved(UserError):
    """The production alias no longer names the version a decision was made from; nothing was moved."""


class RetrainInProgress(UserError):
    """Another process holds the retrain lock: a retrain or a promotion is under way."""


def production_version(client: MlflowClient, settings: Settings) -> str | None:
    """The version the production alias names now (None: no such model or no such alias).

    Read from the registered model's aliases rather than through :mod:`housing.registry.versions`, which will
    call this module: importing it here would be circular.
    """
    models = client.search_registered_models(filter_string=f"name = '{settings.model_name}'")
    version = models[0].aliases.get(settings.production_alias) if models else None
    return None if version is None else str(version)


def move_production(
    client: MlflowClient,
    settings: Settings,
    *,
    expected: str | None,
    to_version: str,
    command: str,
    reason: str,
    evidence: dict[str, Any],
) -> None:
    """Point production at ``to_version`` if it still names ``expected``, and append the move to the ledger.

    Raises :class:`ProductionMoved` (alias and ledger untouched) when production names another version.
    The caller should hold :data:`housing.store.locks.RETRAIN_LOCK`.
    """
    with opened_engine(settings.log_database_url) as engine:
        _move(
            client,
            settings,
            engine,
            expected=expected,
            to_version=to_version,
            command=command,
            reason=reason,
            evidence=evidence,
        )


def _move(
    client: MlflowClient,
    settings: Settings,
    engine: Engine,
    *,
    expected: str | None,
    to_version: str,
    command: str,
    reason: str,
    evidence: dict[str, Any],
) -> None:
    name, alias = settings.model_name, settings.production_alias
    current = production_version(client, settings)
    if current != expected:
        raise ProductionMoved(
            f"'{alias}' of {name} is now {_describe(current)}, not {_describe(expected)} as this {command}"
            f" expected (another process moved it); not moving it to version {to_version}"
        )
    create_ledger_table(engine)  # the ledger must be reachable before the alias moves
    client.set_registered_model_alias(name, alias, to_version)
    record_change(
        engine, LedgerEntry(datetime.now(UTC), name, expected, to_version, command, reason, evidence)
    )
    logger.info(
        "'%s' of %s: %s -> version %s (%s: %s)", alias, name, _describe(expected), to_version, command, reason
    )


def _describe(version: str | None) -> str:
    return "unset" if version is None else f"version {version}"


def drop_rolled_back_challenger(client: MlflowClient, settings: Settings, rolled_back: str) -> None:
    """Remove ``staging`` when it names the version just rolled back: left there, it would be the challenger
    in shadow and live evidence could promote it straight back."""
    models = client.search_registered_models(filter_string=f"name = '{settings.model_name}'")
    if models and str(models[0].aliases.get(settings.staging_alias)) == rolled_back:
        client.delete_registered_model_alias(settings.model_name, settings.staging_alias)
        client.set_model_version_tag(
            settings.model_name, rolled_back, "shadow_verdict", "rolled back: not a challenger any more"
        )
        logger.info(
            "'%s' removed from version %s, which was rolled back", settings.staging_alias, rolled_back
        )


def rollback(client: MlflowClient, settings: Settings, command: str) -> tuple[str, str]:
    """Move production back to the version before it, per the ledger; returns (from_version, to_version).

    Holds :data:`housing.store.locks.RETRAIN_LOCK` (:class:`RetrainInProgress` when another process has it).
    The rollback is itself a ledger entry with reason ``rollback``; a second rollback goes one step further
    back. A one-sentence :class:`UserError` when there is no production or the ledger knows no earlier
    version.
    """
    name = settings.model_name
    with (
        opened_engine(settings.log_database_url) as engine,
        held_lock(engine, RETRAIN_LOCK, lease_seconds=settings.monitor_lock_seconds) as lock,
    ):
        if lock is None:
            holder = describe_holder(engine, RETRAIN_LOCK) or "another process"
            raise RetrainInProgress(
                f"a retrain or promotion is in progress ({holder}); not rolling back, try again when it ends"
            )
        current = production_version(client, settings)
        if current is None:
            raise UserError(
                f"{name} has no '{settings.production_alias}' version; there is nothing to roll back"
            )
        target = previous_production(engine, name, current)
        if target is None:
            raise UserError(
                f"the production ledger records no version of {name} before version {current}; nothing to"
                " roll back to"
            )
        if target not in {
            str(version.version) for version in client.search_model_versions(f"name = '{name}'")
        }:
            raise UserError(
                f"version {target} of {name}, production before version {current}, no longer exists in the"
                " registry"
            )
        undone = next(
            entry
            for entry in reversed(read_history(engine, name))
            if entry.to_version == current and entry.reason != ROLLBACK_REASON
        )
        evidence = {
            "rolled_back_version": current,
            "undoes_entry": undone.id,
            "undoes_command": undone.command,
        }
        _move(
            client,
            settings,
            engine,
            expected=current,
            to_version=target,
            command=command,
            reason=ROLLBACK_REASON,
            evidence=evidence,
        )
        drop_rolled_back_challenger(client, settings, current)
        return current, target
