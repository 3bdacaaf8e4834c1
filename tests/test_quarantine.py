"""Validation by answer type, messages that say how to proceed, and quarantine accounting."""

import hashlib

import pandas as pd
import pytest

from tasks.data_loading import Dataset, fingerprint_tables
from tasks.quarantine import QuarantineLimitError, validate_and_quarantine, validate_cached, validated_record
from tasks.settings import ValidationConfig, load_config
from tasks.validation import DataValidationError, ensure_valid, validate_dataset

TEXT = ["The TideWatch T4 buoy weighs 212 kg and floats in Kellsport harbour.",
        "The Kellsport office opens at 8 am on weekdays and closes at 5 pm.",
        "The SaltLog SL-9 sonde measures salinity every ten minutes."]
DOCS = pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "title": ["Buoy", "Office", "Sonde"], "text": TEXT,
                     "source": [None] * 3, "updated_at": [None] * 3})
QUESTIONS = [f"{hashlib.sha256(str(i).encode()).hexdigest()[:24]}?" for i in range(40)]  # no two alike


def _qa(answers: list[str], docs: list[str] | None = None) -> pd.DataFrame:
    n = len(answers)
    return pd.DataFrame({"qa_id": [f"q{i:02d}" for i in range(n)], "question": QUESTIONS[:n],
                         "answer": [[a] for a in answers], "doc_id": docs or [f"d{1 + i % 3}" for i in range(n)],
                         "split": [("train", "train", "train", "validation", "test")[i % 5] for i in range(n)]})


def _dataset(qa: pd.DataFrame, docs: pd.DataFrame = DOCS) -> Dataset:
    return Dataset(docs, qa, fingerprint_tables(docs, qa), "data/toy")


def test_free_form_answers_need_not_occur_in_the_document():
    qa = _qa(["It is a heavy yellow buoy that floats in the harbour."] * 20)
    assert not validate_dataset(DOCS, qa, ValidationConfig(), "toy").success  # as spans they fail
    assert validate_dataset(DOCS, qa, ValidationConfig(), "toy", answer_type="free_form").success


def test_label_answers_must_be_in_the_label_set_and_are_counted_per_split():
    qa = _qa(["yes", "no", "Maybe", "perhaps"] * 5)
    report = validate_dataset(DOCS, qa, ValidationConfig(), "toy", "label", ["yes", "no", "maybe"])
    (failure,) = report.failures
    assert failure.rule == "the answer is one of the labels (yes, no, maybe)" and failure.unexpected_count == 5
    assert failure.key == "data.labels" and failure.waivable
    assert report.statistics["train_per_label"] == {"yes": 3, "no": 3, "maybe": 3}


def test_a_failing_bound_names_the_key_that_relaxes_it_and_quarantine():
    qa = _qa(["212 kg"] * 19 + ["a" * 400], ["d1"] * 20)
    with pytest.raises(DataValidationError) as err:
        ensure_valid(validate_dataset(DOCS, qa, ValidationConfig(), "data/toy"))
    message = str(err.value)
    assert "[qa.answer_chars_max] every answer has at most 300 characters: 1 failing" in message
    assert "relax with validation.answer_chars" in message
    assert "validation.on_failure=quarantine" in message


def test_long_documents_have_no_upper_bound_by_default():
    docs = DOCS.assign(text=[t * 2000 for t in TEXT])  # ~130,000 characters each
    assert validate_dataset(docs, _qa(["212 kg"] * 5, ["d1"] * 5), ValidationConfig(), "toy").success


def test_quarantine_drops_failing_rows_and_the_qa_of_failing_documents():
    docs = pd.concat([DOCS, pd.DataFrame([{"doc_id": "d4", "title": "Empty", "text": "   ", "source": None,
                                            "updated_at": None}])], ignore_index=True)
    answers = ["212 kg"] * 40
    doc_ids = ["d1"] * 40
    answers[7] = "an answer that is in no document"
    doc_ids[12] = "d4"
    cfg = load_config("configs/ci.yaml", ["data.answer_type=span", "validation.on_failure=quarantine",
                                              "validation.max_quarantined_share=0.1"])
    validated = validate_and_quarantine(_dataset(_qa(answers, doc_ids), docs), cfg)
    assert validated.report.success and not validated.before.success
    kept = validated.dataset
    assert "d4" not in set(kept.documents["doc_id"]) and {"q07", "q12"}.isdisjoint(kept.qa["qa_id"])
    assert len(kept.qa) == 38 and kept.fingerprint != fingerprint_tables(docs, _qa(answers, doc_ids))
    table = validated.quarantined.set_index("record")
    assert table.loc["q07", "rule"] == "the gold answer occurs in its gold document (normalised)"
    assert set(table.loc[["q12"], "rule"]) == {"its gold document was quarantined",  # and its answer is not in it
                                               "the gold answer occurs in its gold document (normalised)"}
    assert set(table.loc[["d4"], "rule"]) == {"document text is not empty",
                                              "document text length at least 20 characters"}
    record = validated_record(validated)
    assert record.metrics["quarantined_qa"] == 2 and record.metrics["quarantined_documents"] == 1
    assert "quarantined.csv" in record.tables and record.metrics["validation_success"] == 1.0


def test_quarantine_above_its_share_stops_and_says_so():
    answers = ["212 kg"] * 40
    for i in (1, 2, 3):
        answers[i] = "not in the document"
    cfg = load_config("configs/ci.yaml", ["data.answer_type=span", "validation.on_failure=quarantine"])  # 2 rows
    with pytest.raises(QuarantineLimitError, match=r"drop 3 of 40 QA rows \(7.5%\), more than "
                                                   r"validation.max_quarantined_share=0.05"):
        validate_and_quarantine(_dataset(_qa(answers, ["d1"] * 40)), cfg)


def test_duplicate_ids_and_leakage_are_never_quarantined():
    qa = _qa(["212 kg"] * 20, ["d1"] * 20)
    qa.loc[4, "question"] = qa.loc[0, "question"]  # q04 is a test question equal to train q00
    qa.loc[9, "answer"] = ["not in the document"]  # a row rule too: still no quarantine
    cfg = load_config("configs/ci.yaml", ["data.answer_type=span", "validation.on_failure=quarantine"])
    validated = validate_and_quarantine(_dataset(qa), cfg)
    assert not validated.report.success and validated.before is None and validated.quarantined.empty
    with pytest.raises(DataValidationError, match=r"qa.test_question_normalised cannot be quarantined"):
        ensure_valid(validated.report)


def test_validation_is_reused_for_the_same_data_and_rules_and_quarantines_the_same_rows(tmp_path):
    answers, doc_ids = ["212 kg"] * 40, ["d1"] * 40
    answers[7] = "an answer that is in no document"
    dataset = _dataset(_qa(answers, doc_ids))
    cfg = load_config("configs/ci.yaml", ["data.answer_type=span", "validation.on_failure=quarantine",
                                          "validation.max_quarantined_share=0.1", f"cache_root={tmp_path}"])
    first, again = validate_cached(dataset, cfg), validate_cached(dataset, cfg)
    assert not first.reused and again.reused
    assert again.dataset.fingerprint == first.dataset.fingerprint and "q07" not in set(again.dataset.qa["qa_id"])
    assert again.quarantined.equals(first.quarantined) and validated_record(again).tags["reused"] == "True"
    other_rules = cfg.validation.model_copy(update={"question_chars": (1, 9999)})
    assert not validate_cached(dataset, cfg.model_copy(update={"validation": other_rules})).reused
    edited = _dataset(_qa(["212 kg"] * 40, doc_ids))
    assert not validate_cached(edited, cfg).reused  # other data: validated again
