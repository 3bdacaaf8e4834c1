"""A run says what it recomputed and what it reused; with nothing changed, it says so."""

from pathlib import Path

from tasks.changes import changes_record, describe, stage_work
from tasks.finetuning import FinetuneResult, TrainedAdapter
from tasks.indexing import IndexBuild


def _adapter(mode: str, reused: bool) -> TrainedAdapter:
    return TrainedAdapter(FinetuneResult(mode, f"/a/{mode}", 10, 3, reused=reused), "run")


def test_nothing_changed_is_said_in_so_many_words():
    index = IndexBuild("idx-1", Path("/i"), 10, reused=True, seconds=0.1)
    work = stage_work(True, index, {"raft": _adapter("raft", True)}, {"base": True, "hybrid": True})
    line = describe(work, None)
    assert line.startswith("nothing changed: every stage reused its earlier result")
    assert "finetune[raft]" in line and "evaluate[hybrid]" in line and line.endswith("no model version registered")
    assert changes_record(work, None).metrics == {"stages_recomputed": 0.0, "stages_reused": 5.0}


def test_an_edited_document_lists_what_was_redone_and_what_was_kept():
    index = IndexBuild("idx-2", Path("/i"), 10, reused=False, seconds=0.1, embedded=1, reused_vectors=9, removed=1)
    work = stage_work(False, index, {"closed_book": _adapter("closed_book", True), "raft": _adapter("raft", False)},
                      {"base": True, "finetuned": True, "rag": False, "hybrid": False})
    line = describe(work, "4")
    assert line == ("recomputed validate, index (1 chunks embedded, 9 reused, 1 removed), finetune[raft], "
                    "evaluate[rag], evaluate[hybrid]; reused finetune[closed_book], evaluate[base], "
                    "evaluate[finetuned]; registered version 4")
    assert changes_record(work, "4").tags["what_changed"] == line
