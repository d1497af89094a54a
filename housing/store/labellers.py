"""Named labellers: who may send labels to POST /feedback, each with a token of its own, kept hashed in the
prediction-log database (table ``labellers``).

A label steers retraining, so the API needs to know who sent it: every label is stored with its labeller's
name, the monitor caps how much of the evidence one labeller can make up, and the live verdict asks for
labels from more than one. Tokens are random (32 bytes, URL-safe) and stored as their SHA-256 only: reading
the table gives no token. A rotated token stops working as soon as the API re-reads the table (every few
seconds, without a restart); a revoked labeller's labels stay, with its name.

``HOUSING_FEEDBACK_TOKEN`` (or the token the API generates for the local demo) keeps working beside them, as
the labeller named by ``HOUSING_DEFAULT_LABELLER``.

    python -m housing.store.labellers add alice       # prints alice's token once
    python -m housing.store.labellers rotate alice    # a new token; the old one stops working
    python -m housing.store.labellers revoke alice
    python -m housing.store.labellers list
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from housing import cli
from housing.errors import UserError
from housing.store.locks import aware, create_table
from housing.store.tables import opened_engine

TOKEN_BYTES = 32
"""Random bytes of a labeller's token (43 URL-safe characters)."""
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
"""A labeller's name: lower-case letters, digits, '_', '.', '-', at most 64 characters."""

metadata = MetaData()
labellers_table = Table(
    "labellers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Labeller:
    name: str
    created_at: datetime
    revoked_at: datetime | None


def token_digest(token: str) -> str:
    """The SHA-256 of a token, as stored and looked up (a random token needs no salt or stretching)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def ensure_tables(engine: Engine) -> None:
    """Create the labellers table if it does not exist."""
    create_table(engine, labellers_table)


def _checked(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(
            f"{name!r} is not a labeller name: lower-case letters, digits, '_', '.' and '-', at most 64"
        )
    return name


def add_labeller(engine: Engine, name: str) -> str:
    """Register labeller ``name``; its new token (shown once: only its digest is kept)."""
    ensure_tables(engine)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(labellers_table).values(
                    name=_checked(name), token_sha256=token_digest(token), created_at=datetime.now(UTC)
                )
            )
    except IntegrityError:
        raise UserError(f"labeller {name!r} exists already: rotate its token instead") from None
    return token


def rotate_token(engine: Engine, name: str) -> str:
    """Give labeller ``name`` a new token (its old one stops working; a revoked labeller is active again)."""
    ensure_tables(engine)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with engine.begin() as connection:
        changed = connection.execute(
            update(labellers_table)
            .where(labellers_table.c.name == _checked(name))
            .values(token_sha256=token_digest(token), revoked_at=None)
        ).rowcount
    if not changed:
        raise UserError(f"there is no labeller {name!r}: add it first")
    return token


def revoke_labeller(engine: Engine, name: str) -> None:
    """Stop labeller ``name``'s token from working (its labels stay, with its name)."""
    ensure_tables(engine)
    with engine.begin() as connection:
        changed = connection.execute(
            update(labellers_table)
            .where(labellers_table.c.name == _checked(name))
            .values(revoked_at=datetime.now(UTC), token_sha256=f"revoked:{secrets.token_hex(16)}")
        ).rowcount
    if not changed:
        raise UserError(f"there is no labeller {name!r}")


def active_digests(engine: Engine) -> dict[str, str]:
    """Token digest -> name of every labeller not revoked (what the API checks tokens against)."""
    ensure_tables(engine)
    query = select(labellers_table.c.token_sha256, labellers_table.c.name).where(
        labellers_table.c.revoked_at.is_(None)
    )
    with engine.connect() as connection:
        return {digest: name for digest, name in connection.execute(query)}


def list_labellers(engine: Engine) -> list[Labeller]:
    """Every registered labeller, by name."""
    ensure_tables(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(labellers_table).order_by(labellers_table.c.name)).all()
    return [
        Labeller(row.name, aware(row.created_at), aware(row.revoked_at) if row.revoked_at else None)
        for row in rows
    ]


def main(args: argparse.Namespace) -> int:
    settings = cli.settings_from_args(args)
    with opened_engine(settings.log_database_url) as engine:
        if args.action == "list":
            for labeller in list_labellers(engine):
                state = f"revoked {labeller.revoked_at:%Y-%m-%d}" if labeller.revoked_at else "active"
                print(f"{labeller.name:<24} since {labeller.created_at:%Y-%m-%d}  {state}")
            return 0
        if args.name is None:
            raise UserError(f"'{args.action}' needs the labeller's name")
        if args.action == "revoke":
            revoke_labeller(engine, args.name)
            print(f"labeller {args.name!r} revoked: its token no longer works")
            return 0
        token = add_labeller(engine, args.name) if args.action == "add" else rotate_token(engine, args.name)
    print(f"labeller {args.name!r}'s token (shown once; give it to the labeller, keep it secret):")
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m housing.store.labellers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("add", "rotate", "revoke", "list"), help="What to do.")
    parser.add_argument("name", nargs="?", default=None, help="The labeller's name (not with list).")
    cli.add_setting_flags(parser, "prediction_log_url", "artifacts_dir")
    return parser


if __name__ == "__main__":
    cli.run(main, build_parser())
