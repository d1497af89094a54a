"""Named labellers on a real SQLite log: each token works for its labeller only, is kept hashed, stops working
when rotated or revoked (as soon as the directory re-reads the table), and the default labeller's token
works beside them."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from housing.api.credentials import ClientDirectory, LabellerDirectory
from housing.config.settings import Settings
from housing.errors import UserError
from housing.store.labellers import add_labeller, list_labellers, revoke_labeller, rotate_token
from housing.store.prediction_log import PredictionLog

DEFAULT_TOKEN = "the-default-labellers-token-0123456789"


def test_each_labeller_has_its_own_token_kept_hashed_and_rotated_or_revoked_without_a_restart(
    log: PredictionLog,
):
    alice, bob = add_labeller(log.engine, "alice"), add_labeller(log.engine, "bob")
    directory = LabellerDirectory("default")
    directory.set_default_token(DEFAULT_TOKEN)
    directory.refresh(log.engine)
    assert (directory.labeller(alice), directory.labeller(bob)) == ("alice", "bob")
    assert directory.labeller(DEFAULT_TOKEN) == "default" and directory.labeller("guess" * 8) is None
    with log.engine.connect() as connection:
        stored = " ".join(str(row) for row in connection.execute(text("select * from labellers")))
    assert alice not in stored and bob not in stored  # digests only
    new_alice = rotate_token(log.engine, "alice")
    revoke_labeller(log.engine, "bob")
    assert directory.labeller(alice) == "alice"  # until the directory re-reads the table
    directory.refresh(log.engine)
    assert directory.labeller(alice) is None and directory.labeller(new_alice) == "alice"
    assert directory.labeller(bob) is None and directory.named == 1
    assert [(labeller.name, labeller.revoked_at is None) for labeller in list_labellers(log.engine)] == [
        ("alice", True),
        ("bob", False),
    ]
    with pytest.raises(UserError, match="exists already"):
        add_labeller(log.engine, "alice")
    with pytest.raises(UserError, match="is not a labeller name"):
        add_labeller(log.engine, "Alice Smith")


def test_clients_are_named_by_their_token_or_by_their_address_when_none_is_required():
    open_api = ClientDirectory(Settings())
    assert open_api.client([], ("10.0.0.7", 5000)) == (0, "10.0.0.7")
    guarded = ClientDirectory(Settings(predict_tokens="shop=" + "s" * 32 + ", bank=" + "b" * 40))
    bearer = [(b"authorization", b"Bearer " + b"b" * 40)]
    assert guarded.client(bearer, ("10.0.0.7", 5000)) == (0, "bank")
    assert guarded.client([], ("10.0.0.7", 5000))[0] == 401
    assert guarded.client([(b"authorization", b"Bearer " + b"x" * 40)], None)[0] == 403
    with pytest.raises(ValueError, match="needs at least 32 characters"):
        Settings(predict_tokens="shop=short")
