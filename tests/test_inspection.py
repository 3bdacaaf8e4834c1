"""`ragtune inspect`: a profile of a new dataset and a starter config that accepts it."""

import hashlib
import json

import yaml

from tasks.inspection import inspect_dataset, read_template, write_config
from tasks.quarantine import validate_and_quarantine
from tasks.settings import load_config
from tests.conftest import ROOT, write_jsonl

TEMPLATE = read_template(ROOT / "configs" / "ci.yaml")
DOCS = [json.loads(line) for line in (ROOT / "data" / "demo" / "documents.jsonl").read_text().splitlines()]


def test_label_pairs_with_their_own_half_test_split_get_a_config_that_accepts_them(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data" / "demo_labels" / "qa.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 2 else "train"
    data = tmp_path / "pubmed-like"
    data.mkdir()
    write_jsonl(data / "documents.jsonl", DOCS)
    write_jsonl(data / "qa.jsonl", rows)
    inspection = inspect_dataset(data, TEMPLATE)
    assert inspection.answers.answer_type == "label" and set(inspection.answers.labels) == {"yes", "no", "maybe"}
    assert inspection.splits == {"train": 90, "validation": 0, "test": 90}
    assert not inspection.default_report.success  # a 50% test share is outside the default bounds
    assert any("validation.split_bounds.test widened to [0.05, 0.55]" in note for note in inspection.notes)
    assert inspection.starter_report.success
    out = tmp_path / "starter.yaml"
    write_config(inspection, out)
    assert out.read_text().startswith("# Starter config written by `ragtune inspect`")
    cfg = load_config(out)
    assert cfg.data.answer_type == "label" and cfg.data.max_questions_per_split == {"test": 8}  # kept from ci.yaml
    assert cfg.index.root.as_posix() == "artifacts/pubmed-like/index"


def test_a_few_broken_answers_are_quarantined_by_the_starter_config(tmp_path):
    doc = DOCS[0]
    words = list(dict.fromkeys(w.strip(".,;:()") for w in doc["text"].split() if len(w) > 3))  # distinct spans
    questions = [{"id": f"q{i}", "question": f"What is {hashlib.sha256(str(i).encode()).hexdigest()[:20]}?",
                  "answers": [{"text": words[i % len(words)], "answer_start": 0}]}
                 for i in range(60)]
    questions[3]["answers"] = [{"text": "zzzz not in the text", "answer_start": 0}]
    squad = {"data": [{"title": doc["title"], "paragraphs": [{"context": doc["text"], "qas": questions}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    inspection = inspect_dataset(path, TEMPLATE)
    assert inspection.answers.answer_type == "span"
    assert [f.rule for f in inspection.default_report.failures] == [
        "the gold answer occurs in its gold document (normalised)"]
    assert inspection.config["validation"]["on_failure"] == "quarantine"
    out = tmp_path / "starter.yaml"
    write_config(inspection, out)
    cfg = load_config(out)
    from tasks.data_loading import load_dataset

    dataset = load_dataset(cfg.data)
    resolved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"answer_type": "span"})})
    validated = validate_and_quarantine(dataset, resolved)
    assert validated.report.success and list(validated.quarantined["record"]) == ["q3"]
    assert yaml.safe_load(out.read_text())["validation"]["max_quarantined_share"] >= 0.05
