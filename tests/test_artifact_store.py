"""tasks.artifact_store on a shared path (MLflow's local artifact repository): publish, fetch, the marker
that makes an entry complete, paths from another machine, and a store that cannot be reached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tasks.artifact_store import MARKER, SERVED_STORE, ArtifactStore, local_copy, store_uri


def _entry(root: Path, name: str) -> Path:
    directory = root / name
    (directory / "sub").mkdir(parents=True)
    (directory / "weights.bin").write_bytes(b"\x00\x01" * 100)
    (directory / "sub" / "manifest.json").write_text('{"ok": true}')
    return directory


def test_published_entries_are_fetched_complete_and_only_once_published(tmp_path):
    store = ArtifactStore(str(tmp_path / "shared"))
    built = _entry(tmp_path / "machine-a", "idx-1")
    assert not store.fetch("index", "idx-1", tmp_path / "machine-b" / "idx-1")
    assert store.publish("index", "idx-1", built) and not store.publish("index", "idx-1", built)
    fetched = tmp_path / "machine-b" / "idx-1"
    assert store.fetch("index", "idx-1", fetched)
    assert (fetched / "weights.bin").read_bytes() == (built / "weights.bin").read_bytes()
    assert (fetched / "sub" / "manifest.json").read_text() == '{"ok": true}'
    assert not (fetched / MARKER).exists()
    assert [p.name for p in fetched.parent.iterdir()] == ["idx-1"]  # no staging left behind


def test_an_entry_without_its_marker_is_not_taken(tmp_path):
    store = ArtifactStore(str(tmp_path / "shared"))
    (tmp_path / "shared" / "adapters" / "raft-1").mkdir(parents=True)  # an upload that died half way
    (tmp_path / "shared" / "adapters" / "raft-1" / "weights.bin").write_bytes(b"\x00")
    assert not store.has("adapters", "raft-1")
    assert not store.fetch("adapters", "raft-1", tmp_path / "local" / "raft-1")
    assert not (tmp_path / "local" / "raft-1").exists()


def test_a_store_that_cannot_be_reached_is_a_miss_not_a_failure(tmp_path, caplog):
    store = ArtifactStore("unknown-scheme://nowhere/store")
    with caplog.at_level(logging.WARNING, logger="ragtune.store"):
        assert not store.fetch("index", "idx-1", tmp_path / "idx-1")
        assert not store.publish("index", "idx-1", _entry(tmp_path, "built"))
    assert "building it here" in caplog.text and "will build it themselves" in caplog.text


def test_paths_of_another_machine_resolve_here_or_from_the_store(tmp_path):
    store = ArtifactStore(str(tmp_path / "shared"))
    store.publish("adapters", "raft-9", _entry(tmp_path / "a", "raft-9"))
    elsewhere = "/on/machine/a/adapters/raft-9"
    local = local_copy(elsewhere, tmp_path / "b" / "adapters", "adapters", store)
    assert local == tmp_path / "b" / "adapters" / "raft-9" and (local / "weights.bin").is_file()
    assert local_copy(elsewhere, tmp_path / "b" / "adapters", "adapters", None) == local  # now here
    with pytest.raises(FileNotFoundError, match="scale.store"):
        local_copy("/on/machine/a/adapters/raft-0", tmp_path / "b" / "adapters", "adapters", store)


def test_auto_means_the_tracking_servers_artifacts_and_nothing_for_a_local_store():
    assert store_uri("auto", "http://10.0.0.5:5000") == SERVED_STORE
    assert store_uri("auto", "sqlite:///mlruns/mlflow.db") is None
    assert store_uri("s3://bucket/ragtune", "sqlite:///x.db") == "s3://bucket/ragtune"
    assert store_uri(None, "http://10.0.0.5:5000") is None
