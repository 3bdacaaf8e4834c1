"""Stage results are keyed by exactly what the stage reads, stored whole or not at all."""

import pandas as pd

from tasks.stage_cache import StageCache, stage_key


def test_key_follows_every_input_and_nothing_else():
    base = stage_key(data="fp1", rules={"min": 1})
    assert stage_key(rules={"min": 1}, data="fp1") == base  # order of inputs does not matter
    assert stage_key(data="fp2", rules={"min": 1}) != base
    assert stage_key(data="fp1", rules={"min": 2}) != base


def test_round_trip_and_a_miss(tmp_path):
    cache = StageCache(tmp_path, "evaluate")
    table = pd.DataFrame({"qa_id": ["a", "b"], "f1": [0.5, 1.0]})
    assert cache.get("k1") is None
    cache.put("k1", (table, "run-1"))
    stored, run_id = cache.get("k1")
    assert stored.equals(table) and run_id == "run-1"
    assert [p.name for p in (tmp_path / "evaluate").iterdir()] == ["k1.pkl"]  # no staging file left behind


def test_an_unreadable_entry_is_a_miss_not_an_error(tmp_path):
    cache = StageCache(tmp_path, "validate")
    cache.put("k", {"ok": True})
    cache.path("k").write_bytes(b"not a pickle")
    assert cache.get("k") is None
    cache.path("k").write_bytes(cache.path("k").read_bytes()[:3])
    assert cache.get("k") is None
