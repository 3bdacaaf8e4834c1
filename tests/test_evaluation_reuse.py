"""A candidate's evaluation is keyed by its system, its questions and how they are scored; nothing else."""

import pandas as pd

from tasks.candidates import CANDIDATES
from tasks.evaluation import evaluation_key, evaluation_set_id
from tasks.settings import load_config
from tests.conftest import ROOT

TEST = pd.DataFrame({"qa_id": ["q1", "q2"], "question": ["When?", "How heavy?"], "answer": [["8 am"], ["212 kg"]],
                     "doc_id": ["d1", "d2"], "split": ["test", "test"]})
DOCS = {"d1": "The office opens at 8 am.", "d2": "The buoy weighs 212 kg.", "d3": "Unrelated."}


def _key(cfg=None, candidate="hybrid", adapter="/x/raft-abc", index="idx-1", test=TEST, docs=DOCS) -> str:
    cfg = cfg or load_config(ROOT / "configs" / "ci.yaml")
    return evaluation_key(CANDIDATES[candidate], cfg, adapter, index, test, docs)


def test_key_changes_with_what_the_evaluation_reads():
    base = _key()
    assert _key(candidate="rag") != base
    assert _key(adapter="/x/raft-def") != base and _key(index="idx-2") != base
    assert _key(test=TEST.assign(answer=[["8 am"], ["212 kilograms"]])) != base
    assert _key(docs={**DOCS, "d1": "The office opens at 9 am."}) != base  # a gold document
    assert _key(cfg=load_config(ROOT / "configs" / "ci.yaml", ["generation.max_new_tokens=9"])) != base
    assert _key(cfg=load_config(ROOT / "configs" / "ci.yaml", ["evaluation.bootstrap_samples=300"])) != base
    assert _key(cfg=load_config(ROOT / "configs" / "ci.yaml", ["index.retrieval.mode=dense"])) != base


def test_key_ignores_what_the_evaluation_does_not_read():
    base = _key()
    assert _key(adapter="/elsewhere/raft-abc") == base  # the adapter's content key, not where it is stored
    assert _key(docs={**DOCS, "d3": "Edited, but no question points here."}) == base
    assert _key(test=TEST.iloc[::-1]) == base  # row order
    others = load_config(ROOT / "configs" / "ci.yaml", ["evaluation.candidates=[hybrid]", "index.root=/tmp/i",
                                                        "cache_root=/tmp/c", "finetune.epochs=7"])
    assert _key(cfg=others) == base
    searched = load_config(ROOT / "configs" / "ci.yaml", ["index.retrieval.mode=dense", "index.top_k=4"])
    assert _key(cfg=searched, candidate="finetuned", adapter="/x/closed_book-abc", index=None) == _key(
        candidate="finetuned", adapter="/x/closed_book-abc", index=None)  # a closed-book candidate never searches


def test_evaluation_set_id_names_questions_answers_and_gold_documents():
    assert evaluation_set_id(TEST, DOCS) == evaluation_set_id(TEST.iloc[::-1], DOCS)
    assert evaluation_set_id(TEST, DOCS) != evaluation_set_id(TEST.iloc[:1], DOCS)
    assert evaluation_set_id(TEST, DOCS) != evaluation_set_id(TEST, {**DOCS, "d2": "The buoy weighs 212 kg now."})
