"""Leakage by rewording: a test question that copies a train question with the same gold document and
answer is caught at the lower `validation.near_duplicate_same_answer_ratio`; genuinely different
questions, and look-alikes with another document or answer, pass."""

import math

import pandas as pd
import pytest

from tasks.answer_types import infer, profile
from tasks.data_loading import Dataset, fingerprint_tables, load_dataset
from tasks.quarantine import validate_and_quarantine
from tasks.settings import DataConfig, ValidationConfig, load_config
from tasks.text import normalize_answer
from tasks.validation import DataValidationError, ExpectationFailure, ValidationReport, ensure_valid, validate_dataset
from tasks.validation_columns import documents_with_columns, qa_with_columns
from tests.conftest import XQUAD

KEY = "validation.near_duplicate_same_answer_ratio"
RULE = "rewords a train question with the same gold document and answer"
CFG = ValidationConfig()

DOCS = pd.DataFrame({
    "doc_id": ["d1", "d2", "d3"],
    "title": ["Brightwater", "Harbour Survey", "SaltLog"],
    "text": [
        "Brightwater Instruments was founded in 1998 by Margaret Ansell, who was also its first chief executive; "
        "Tom Reyes is the chief executive today. In 2019 the firm employed 312 people, 85 of them engineers, "
        "shipped 312 sensors and sold 312 buoys. The firm moved to Quayside Works in 2004, the year it first made "
        "a profit. The TideWatch T4 buoy weighs 212 kg, its anchor 90 kg, and it floats in Kellsport harbour, "
        "which also hosts the annual sea trial. The Kellsport office opens at 8 am on weekdays. The Port Ardlow "
        "office opened in 2011. Brightwater's largest customer by revenue is the Kellsport Harbour Authority.",
        "Harbour Survey Ltd, a rival firm, employed 312 people in 2019.",
        "The SaltLog SL-9 sonde measures salinity every ten minutes and reports it by radio.",
    ],
    "source": [None] * 3,
    "updated_at": [None] * 3,
})
FILLER = [("How often does the SaltLog SL-9 measure salinity?", ["every ten minutes"]),
          ("How does the SL-9 report its readings?", ["by radio"]),
          ("What does the SaltLog sonde measure?", ["salinity"])]  # train rows on d3, so the split shares pass

ISSUE = ("How many people did the firm employ in 2019?", "How many staff did the firm employ in 2019?")

# (train question, test question, train answers, test answers): same gold document d1, a shared answer.
REWORDED = [
    (*ISSUE, ["312"], ["312"]),  # one-word synonym
    ("What is the weight of the TideWatch T4 buoy?", "What is the mass of the TideWatch T4 buoy?",
     ["212 kg"], ["212 kg"]),
    ("Which customer is Brightwater's largest by revenue?", "Which client is Brightwater's largest by revenue?",
     ["Kellsport Harbour Authority"], ["the Kellsport Harbour Authority"]),  # answers equal once normalised
    ("Who founded Brightwater Instruments?", "Who started Brightwater Instruments?",
     ["Ansell"], ["Margaret Ansell", "ANSELL."]),  # any one accepted answer in common
    ("In 2019, how many people did the firm employ?", ISSUE[0], ["312"], ["312"]),  # reordered clause
    ("According to the handbook, which harbour does the T4 buoy float in?",
     "Which harbour does the T4 buoy float in, according to the handbook?",
     ["Kellsport harbour"], ["Kellsport harbour"]),  # reordered clause
    ("Who is the current chief executive of Brightwater Instruments?",
     "Who is the chief executive of Brightwater Instruments?", ["Tom Reyes"], ["Tom Reyes"]),  # dropped word
    ("In which year did the Port Ardlow office first open?", "In which year did the Port Ardlow office open?",
     ["2011"], ["2011"]),  # dropped word
    ("HOW MANY STAFF DID THE FIRM EMPLOY IN 2019", ISSUE[0], ["312"], ["312"]),  # case, no question mark
    ("what time does the kellsport office open on weekdays", "When does the Kellsport office open on weekdays?",
     ["8 am"], ["8 am"]),  # case and question mark with an edit
]

# (train question, test question, train answers, test answers, test doc): as close as the reworded copies,
# but the answer or the document differs. With d1 and the train answer they would be flagged.
NOT_SHARED = [
    (ISSUE[0], "How many engineers did the firm employ in 2019?", ["312"], ["85"], "d1"),
    ("How heavy is the TideWatch T4 buoy?", "How heavy is the TideWatch T4 anchor?", ["212 kg"], ["90 kg"], "d1"),
    ("What is the weight of the TideWatch T4 buoy?", "What is the weight of the TideWatch T4 anchor?",
     ["212 kg"], ["90 kg"], "d1"),
    (*ISSUE, ["312"], ["312"], "d2"),  # the same answer, about another firm
]

# (train question, test question, answer): the same document and answer, but a different question.
DIFFERENT_QUESTION = [
    ("Who founded Brightwater Instruments?", "Who was Brightwater Instruments' first CEO?", "Margaret Ansell"),
    ("Who founded Brightwater Instruments?", "Who was the first chief executive of Brightwater Instruments?",
     "Margaret Ansell"),
    (ISSUE[0], "How many sensors did the firm ship in 2019?", "312"),
    (ISSUE[0], "How many buoys did the firm sell in 2019?", "312"),
    ("What year did the firm move to Quayside Works?", "What year did the firm first make a profit?", "2004"),
    ("Which harbour does the T4 buoy float in?", "Which harbour hosts the annual sea trial?", "Kellsport harbour"),
    ("Who founded it?", "Who ran it first?", "Margaret Ansell"),  # short questions: one word is much of them
    ("When was it built?", "When was it sold?", "1998"),
    ("Who built it?", "Who owns it?", "Brightwater Instruments"),
]


def _qa(train_q: str, test_q: str, train_answers: list[str], test_answers: list[str],
        test_doc: str = "d1") -> pd.DataFrame:
    return pd.DataFrame({
        "qa_id": ["train-pair", "test-pair", "f1", "f2", "f3"],
        "question": [train_q, test_q, *(q for q, _ in FILLER)],
        "answer": [train_answers, test_answers, *(a for _, a in FILLER)],
        "doc_id": ["d1", test_doc, "d3", "d3", "d3"],
        "split": ["train", "test", "train", "train", "train"],
    })


def _validate(qa: pd.DataFrame, cfg: ValidationConfig = CFG) -> ValidationReport:
    return validate_dataset(DOCS, qa, cfg, "data/toy")


def _leak(report: ValidationReport) -> ExpectationFailure:
    (failure,) = [f for f in report.failures if RULE in f.rule]
    return failure


def _similarity(qa: pd.DataFrame) -> float:
    """The test pair's similarity to its closest same-document, same-answer train question (NaN: none)."""
    return float(qa_with_columns(documents_with_columns(DOCS), qa).at[1, "same_answer_similarity"])


@pytest.mark.parametrize(("train_q", "test_q", "train_answers", "test_answers"), REWORDED)
def test_a_reworded_copy_with_the_same_document_and_answer_is_leakage(train_q, test_q, train_answers, test_answers):
    report = _validate(_qa(train_q, test_q, train_answers, test_answers))
    failure = _leak(report)
    assert failure.unexpected_count == 1 and failure.column == "same_answer_similarity"
    assert failure.key == KEY and not failure.waivable
    example = failure.examples[0]
    assert example.startswith("qa_id=test-pair: test question " + repr(test_q)[:40])
    assert "~ train qa_id=train-pair " + repr(train_q)[:40] in example
    assert ", both doc d1 answer " in example
    assert CFG.near_duplicate_same_answer_ratio <= _similarity(_qa(train_q, test_q, train_answers, test_answers))


def test_the_failure_names_the_rule_the_pair_the_shared_document_and_answer_and_the_key():
    report = _validate(_qa(*ISSUE, ["312"], ["312"]))
    assert [f.rule for f in report.failures] == [  # the plain rule (0.92) does not see it
        f"no test question {RULE} (similarity < {CFG.near_duplicate_same_answer_ratio})"]
    assert _leak(report).examples == [
        "qa_id=test-pair: test question 'How many staff did the firm employ in 2019?' ~ train qa_id=train-pair "
        "'How many people did the firm employ in 2019?', both doc d1 answer '312' (similarity 0.86)"]
    with pytest.raises(DataValidationError) as err:
        ensure_valid(report)
    message = str(err.value)
    assert f"[qa.same_answer_similarity] no test question {RULE}" in message
    assert f"relax with {KEY}" in message
    assert "validation.on_failure=quarantine" not in message  # leakage cannot be quarantined


def test_the_shared_answer_is_shown_as_the_test_row_gives_it():
    failure = _leak(_validate(_qa("Who founded Brightwater Instruments?", "Who started Brightwater Instruments?",
                                  ["Ansell"], ["Margaret Ansell", "ANSELL."])))
    assert "both doc d1 answer 'ANSELL.' (similarity 0.86)" in failure.examples[0]


def test_the_threshold_is_the_configured_key():
    qa = _qa(*ISSUE, ["312"], ["312"])  # similarity 0.857
    assert RULE in _leak(_validate(qa, ValidationConfig(near_duplicate_same_answer_ratio=0.85))).rule
    assert _validate(qa, ValidationConfig(near_duplicate_same_answer_ratio=0.86)).success


@pytest.mark.parametrize(("train_q", "test_q", "train_answers", "test_answers", "test_doc"), NOT_SHARED)
def test_a_look_alike_with_another_answer_or_document_passes(train_q, test_q, train_answers, test_answers, test_doc):
    report = _validate(_qa(train_q, test_q, train_answers, test_answers, test_doc))
    assert report.success, report.to_markdown()
    assert math.isnan(_similarity(_qa(train_q, test_q, train_answers, test_answers, test_doc)))  # not compared
    shared = _qa(train_q, test_q, train_answers, train_answers, "d1")
    assert RULE in _leak(_validate(shared)).rule  # what the document or answer alone decides


@pytest.mark.parametrize(("train_q", "test_q", "answer"), DIFFERENT_QUESTION)
def test_a_different_question_with_the_same_document_and_answer_passes(train_q, test_q, answer):
    qa = _qa(train_q, test_q, [answer], [answer])
    assert _validate(qa).success, _validate(qa).to_markdown()
    assert 0 < _similarity(qa) < CFG.near_duplicate_same_answer_ratio  # compared, and judged different


def test_an_exact_copy_is_reported_once_by_the_exact_rule():
    report = _validate(_qa(ISSUE[0], "how many PEOPLE did the firm employ in 2019", ["312"], ["312"]))
    assert [f.column for f in report.failures] == ["test_question_normalised"]


def test_only_test_rows_are_checked():
    qa = _qa(*ISSUE, ["312"], ["312"]).assign(split=["train", "validation", "train", "train", "test"])
    assert _validate(qa).success


def test_quarantine_does_not_drop_a_leak():
    cfg = load_config("configs/ci.yaml", ["data.answer_type=span", "validation.on_failure=quarantine"])
    qa = _qa(*ISSUE, ["312"], ["312"])
    validated = validate_and_quarantine(Dataset(DOCS, qa, fingerprint_tables(DOCS, qa), "data/toy"), cfg)
    assert not validated.report.success and validated.before is None and validated.quarantined.empty
    assert RULE in _leak(validated.report).rule


@pytest.mark.parametrize("config", ["configs/default.yaml", "configs/ci.yaml"])
def test_the_demo_data_passes(config):
    cfg = load_config(config)
    data = load_dataset(cfg.data)
    answer_type, _ = infer(profile(data.qa, data.documents), cfg.data.inference)
    report = validate_dataset(data.documents, data.qa, cfg.validation, data.source, answer_type)
    assert report.success, report.to_markdown()
    checked = [r["expectation_config"]["kwargs"].get("column") for r in report.results["qa"]["results"]]
    assert "same_answer_similarity" in checked


@pytest.mark.skipif(not XQUAD.exists(), reason="shared XQuAD file absent")
def test_xquad_rewordings_stay_in_one_split_whether_split_by_question_or_by_document():
    """SQuAD crowdworkers sometimes asked the same thing twice about one paragraph ("Who did the Super Bowl 50
    National Anthem?" / "Who did the National Anthem at Super Bowl 50?"). Split by question, the loader keeps
    questions with the same paragraph and answer together, so none of those pairs straddles train and test."""
    cfg = ValidationConfig(near_duplicate_ratio=0.99)  # as configs/xquad.yaml
    by_question = load_dataset(DataConfig(path=XQUAD))
    report = validate_dataset(by_question.documents, by_question.qa, cfg, by_question.source)
    assert not any(RULE in f.rule for f in report.failures)
    qa = by_question.qa.assign(answers=by_question.qa["answer"].map(lambda a: {normalize_answer(x) for x in a}))
    for qa_id in ("56beb86b3aeaaa14008c92bd", "56d9c455dc89441400fdb7c4", "5725c337271a42140099d165"):
        row = qa.set_index("qa_id").loc[qa_id]  # each was a test question with a reworded train twin
        twins = qa[(qa["doc_id"] == row["doc_id"]) & qa["answers"].map(lambda a, r=row: bool(a & r["answers"]))]
        assert len(twins) >= 2 and twins["split"].nunique() == 1, twins[["qa_id", "question", "split"]]
    by_document = load_dataset(DataConfig(path=XQUAD, split_by="document"))
    report = validate_dataset(by_document.documents, by_document.qa, cfg, by_document.source)
    assert not any(RULE in f.rule for f in report.failures)
