"""Dataset storage and the split, on tiny frames and temp files."""

import json
import os

import pandas as pd
import pytest

from housing.data.dataset import (
    DataSourceError,
    Split,
    load_and_store,
    load_split,
    read_source,
    save_split,
    split_dataset,
)
from housing.errors import UserError
from housing.schema import COLUMN_NAMES, FEATURE_NAMES
from tests.helpers import tiny_dataset


def test_split_sizes_and_disjoint_rows():
    x_train, x_test, y_train, y_test = split_dataset(tiny_dataset(100), test_size=0.2, random_state=42)
    assert (len(x_train), len(x_test), len(y_train), len(y_test)) == (80, 20, 80, 20)
    assert set(x_train.index).isdisjoint(x_test.index)
    assert tuple(x_train.columns) == FEATURE_NAMES


def test_split_depends_on_random_state():
    a = split_dataset(tiny_dataset(100), test_size=0.2, random_state=42)[1].index
    b = split_dataset(tiny_dataset(100), test_size=0.2, random_state=7)[1].index
    assert list(a) != list(b)


def test_store_writes_csv_and_manifest(tmp_path):
    source = tmp_path / "source.csv"
    tiny_dataset(10).to_csv(source, index=False)
    manifest = load_and_store(str(source), tmp_path / "out" / "data.csv", tmp_path / "out" / "manifest.json")
    assert manifest.rows == 10 and len(manifest.sha256) == 64
    stored = pd.read_csv(tmp_path / "out" / "data.csv")
    assert tuple(stored.columns) == COLUMN_NAMES
    assert (
        json.loads((tmp_path / "out" / "manifest.json").read_text())["source_sha256"]
        == manifest.source_sha256
    )


@pytest.mark.parametrize("content", ["", "MedInc,HouseAge\n", "\x00\x01binary"])
def test_unreadable_sources_raise_one_sentence(tmp_path, content):
    source = tmp_path / "bad.csv"
    source.write_text(content)
    with pytest.raises(UserError) as caught:
        load_and_store(str(source), tmp_path / "data.csv", tmp_path / "manifest.json")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "data.csv").exists()


def test_directory_source_is_refused(tmp_path):
    with pytest.raises(DataSourceError, match="is a directory"):
        read_source(str(tmp_path))


def test_a_pipe_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "source.csv"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: the check must come first
    with pytest.raises(DataSourceError, match="is not a regular file"):
        read_source(str(fifo))


def test_a_malformed_csv_names_the_line_and_never_quotes_it(tmp_path):
    source = tmp_path / "bad.csv"
    rows = ["MedInc,HouseAge,AveRooms", "1.0,2.0,3.0", "4.0,5.0,6.0", "7.0,8.0,9.0,SECRET-CELL,10.0"]
    source.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataSourceError) as caught:
        read_source(str(source))
    assert "is not a readable CSV (at line 4)" in str(caught.value) and "SECRET" not in str(caught.value)


def test_split_round_trip_and_missing_split(tmp_path):
    parts = split_dataset(tiny_dataset(50), test_size=0.2, random_state=1)
    save_split(Split(*parts), tmp_path, provenance={"random_state": 1})
    loaded = load_split(tmp_path)
    pd.testing.assert_frame_equal(loaded.x_train, parts[0])
    assert json.loads((tmp_path / "split.json").read_text())["train_rows"] == 40
    with pytest.raises(UserError, match="run preprocess.py first"):
        load_split(tmp_path / "nowhere")
