"""Moving the production and staging aliases: by compare-and-set, under the retrain lock, recorded in the
alias ledger, and rolled back in one step.

:func:`move_production` is the one place that sets ``production`` (:func:`move_staging`, ``staging``). It
re-reads the alias first and refuses (:class:`ProductionMoved`) when it no longer names the version the
caller decided from, so a decision made on stale state never lands. MLflow has no atomic compare-and-set on
aliases: the re-read is a check, and the mutual exclusion comes from the retrain lock
(:data:`housing.store.locks.RETRAIN_LOCK`), which the caller must hold. The move's intent is written to the
ledger in the transaction that confirms the caller's lease is still its own (a holder that lost its lease
moves nothing), then the alias moves, then the entry is marked done. :func:`reconcile_ledger` settles what a
crash between the two left, and records an alias found where no entry put it. :func:`rollback` takes the
lock itself and moves production back to the version the ledger says came before.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from housing.config.settings import Settings
from housing.errors import UserError
from housing.registry.ledger import (
    ABANDONED,
    DONE,
    FAILED,
    FOUND,
    INTENT,
    PRODUCTION,
    ROLLBACK_REASON,
    STAGING,
    UNSET,
    LedgerEntry,
    append_entry,
    create_ledger_table,
    latest_entry,
    previous_production,
    read_history,
    record_change,
    set_status,
)
from housing.store.locks import RETRAIN_LOCK, current_lease, describe_holder, held_lock
from housing.store.tables import opened_engine

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


class ProductionMoved(UserError):
    """The production alias no longer names the version a decision was made from; nothing was moved."""


class RetrainInProgress(UserError):
    """Another process holds the retrain lock: a retrain or a promotion is under way."""


def alias_version(client: MlflowClient, settings: Settings, alias: str) -> str | None:
    """The version ``alias`` names now (None: no such model or no such alias).

    Read from the registered model's aliases rather than through :mod:`housing.registry.versions`, which will
    call this module: importing it here would be circular.
    """
    models = client.search_registered_models(filter_string=f"name = '{settings.model_name}'")
    version = models[0].aliases.get(alias) if models else None
    return None if version is None else str(version)


def production_version(client: MlflowClient, settings: Settings) -> str | None:
    """The version the production alias names now (None: no such model or no such alias)."""
    return alias_version(client, settings, settings.production_alias)


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
    """Point production at ``to_version`` if it still names ``expected``, recorded in the ledger.

    Raises :class:`ProductionMoved` (alias and ledger untouched) when production names another version, and
    :class:`housing.store.locks.LeaseLost` when the caller's retrain lock was lost.
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


def move_staging(
    client: MlflowClient, settings: Settings, to_version: str | None, *, command: str, reason: str
) -> None:
    """Point staging at ``to_version`` (None: remove it) under the retrain lock, recorded in the ledger; the
    alias is compared with what it named a moment ago, like production's."""
    current = alias_version(client, settings, settings.staging_alias)
    if current == to_version:
        return
    with opened_engine(settings.log_database_url) as engine:
        _move(
            client,
            settings,
            engine,
            expected=current,
            to_version=to_version,
            command=command,
            reason=reason,
            evidence={},
            alias=STAGING,
        )


def _move(
    client: MlflowClient,
    settings: Settings,
    engine: Engine,
    *,
    expected: str | None,
    to_version: str | None,
    command: str,
    reason: str,
    evidence: dict[str, Any],
    alias: str = PRODUCTION,
) -> None:
    name = settings.model_name
    registry_alias = settings.production_alias if alias == PRODUCTION else settings.staging_alias
    lease = current_lease(RETRAIN_LOCK)
    current = alias_version(client, settings, registry_alias)
    if current != expected:
        raise ProductionMoved(
            f"'{registry_alias}' of {name} is now {_describe(current)}, not {_describe(expected)} as this"
            f" {command} expected (another process moved it); not moving it to {_describe(to_version)}"
        )
    create_ledger_table(engine)  # the ledger must be reachable before the alias moves
    entry = LedgerEntry(
        datetime.now(UTC),
        name,
        expected,
        to_version or UNSET,
        command,
        reason,
        evidence,
        alias=alias,
        status=INTENT,
        fence=lease.lock.fence,
    )
    with engine.begin() as connection:
        lease.confirm(connection)  # LeaseLost: nothing written, nothing moved
        entry_id = append_entry(connection, entry)
    try:
        if to_version is None:
            client.delete_registered_model_alias(name, registry_alias)
        else:
            client.set_registered_model_alias(name, registry_alias, to_version)
    except Exception:
        set_status(engine, entry_id, FAILED)
        raise
    set_status(engine, entry_id, DONE)
    logger.info(
        "'%s' of %s: %s -> %s (%s: %s)",
        registry_alias,
        name,
        _describe(expected),
        _describe(to_version),
        command,
        reason,
    )


def reconcile_ledger(client: MlflowClient, settings: Settings, engine: Engine, command: str) -> list[str]:
    """Make the ledger agree with the registry, under the retrain lock: an intent whose move the alias shows
    is marked done, one it does not, abandoned; an alias naming a version that no entry moved it to gets a
    ``found`` entry. One sentence per disagreement found (none: they agreed)."""
    said = []
    for alias, registry_alias in ((PRODUCTION, settings.production_alias), (STAGING, settings.staging_alias)):
        current = alias_version(client, settings, registry_alias)
        entry = latest_entry(engine, settings.model_name, alias)
        if entry is not None and entry.status == INTENT and entry.id is not None:
            made = (entry.to_version if entry.to_version != UNSET else None) == current
            set_status(engine, entry.id, DONE if made else ABANDONED)
            said.append(
                f"the ledger's intent #{entry.id} to move '{registry_alias}' to {_describe(entry.to_version)}"
                f" was {'made' if made else 'never made'} (a crash between the two writes): marked"
                f" {DONE if made else ABANDONED}"
            )
            entry = latest_entry(engine, settings.model_name, alias) if not made else entry
        recorded = _recorded_version(engine, settings, alias)
        if recorded != current and not (recorded is None and entry is None and alias == STAGING):
            record_change(
                engine,
                LedgerEntry(
                    datetime.now(UTC),
                    settings.model_name,
                    recorded,
                    current or UNSET,
                    command,
                    f"'{registry_alias}' found at {_describe(current)}, where the ledger has"
                    f" {_describe(recorded)}: moved outside this product's commands",
                    {},
                    alias=alias,
                    status=FOUND,
                ),
            )
            said.append(
                f"'{registry_alias}' names {_describe(current)} but the ledger says {_describe(recorded)}:"
                " recorded as found (it was moved outside this product's commands)"
            )
    for sentence in said:
        logger.warning("alias ledger: %s", sentence)
    return said


def _recorded_version(engine: Engine, settings: Settings, alias: str) -> str | None:
    """The version the newest move of ``alias`` that happened (done or found) left it at."""
    for entry in reversed(read_history(engine, settings.model_name, alias=alias)):
        if entry.status in (DONE, FOUND):
            return None if entry.to_version == UNSET else entry.to_version
    return None


def _describe(version: str | None) -> str:
    return "unset" if version is None or version == UNSET else f"version {version}"


def drop_rolled_back_challenger(client: MlflowClient, settings: Settings, rolled_back: str) -> None:
    """Remove ``staging`` when it names the version just rolled back: left there, it would be the challenger
    in shadow and live evidence could promote it straight back."""
    if alias_version(client, settings, settings.staging_alias) == rolled_back:
        move_staging(
            client,
            settings,
            None,
            command="rollback",
            reason=f"version {rolled_back} was rolled back: not a challenger any more",
        )
        client.set_model_version_tag(
            settings.model_name, rolled_back, "shadow_verdict", "rolled back: not a challenger any more"
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
            if entry.to_version == current
            and entry.reason != ROLLBACK_REASON
            and entry.status in (DONE, FOUND)
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
