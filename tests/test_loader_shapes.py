"""Every input shape the loaders meet, in real files: accepted shapes normalise to the same answers in
every format; malformed ones are a DataLoadError naming the file, the record (or JSON path) and the rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.data_loading import DataLoadError, load_dataset
from tasks.settings import DataConfig, ValidationConfig
from tests.conftest import write_jsonl

DOC = {"doc_id": "d1", "title": "T4", "text": "The TideWatch T4 buoy weighs 212 kg and is 312 cm long."}
QUESTION = "How heavy is the T4?"


def _qa(answer: Any, **fields: Any) -> dict:
    return {"qa_id": "q1", "question": QUESTION, "answer": answer, "doc_id": "d1", "split": "train", **fields}


def _jsonl_dir(tmp_path: Path, qa: list[dict], docs: list[dict] | None = None) -> Path:
    write_jsonl(tmp_path / "documents.jsonl", docs or [DOC])
    write_jsonl(tmp_path / "qa.jsonl", qa)
    return tmp_path


def _load(path: Path, **cfg: Any):
    return load_dataset(DataConfig(path=path, **cfg))


def _error(path: Path, **cfg: Any) -> str:
    with pytest.raises(DataLoadError) as err:
        _load(path, **cfg)
    return str(err.value)


# --- answers: one normaliser, every source ---------------------------------------------------------------------

ACCEPTED = [
    pytest.param("312", ["312"], id="string-is-one-answer"),
    pytest.param(["212 kg", "212 kilograms"], ["212 kg", "212 kilograms"], id="list-of-strings"),
    pytest.param({"text": ["212 kg", "212"], "answer_start": [29, 29]}, ["212 kg", "212"], id="squad-dict"),
    pytest.param([{"text": "212 kg", "answer_start": 29}, {"text": "212 kg"}], ["212 kg"], id="list-of-text-dicts"),
    pytest.param(312, ["312"], id="int"),
    pytest.param(3.5, ["3.5"], id="float"),
    pytest.param(["212 kg", 212], ["212 kg", "212"], id="list-with-number"),
]


@pytest.mark.parametrize(("answer", "expected"), ACCEPTED)
def test_jsonl_answer_shapes_normalise(tmp_path, answer, expected):
    assert _load(_jsonl_dir(tmp_path, [_qa(answer)])).qa.iloc[0]["answer"] == expected


REFUSED = [
    pytest.param(None, "answer: missing (null); an answer must be a string or a list of strings", id="null"),
    pytest.param(True, "answer: an answer must be a string or a number, got bool", id="bool"),
    pytest.param([["212 kg"]], "answer[0]: must be a string, got list (nested values are not answers)",
                 id="nested-list"),
    pytest.param({"answer_start": [3]}, "answer: missing 'text' (an answer dict needs it; keys: ['answer_start'])",
                 id="dict-without-text"),
    pytest.param("   ", "answer: blank answer; an answer needs some text", id="blank-string"),
    pytest.param(["212 kg", None], "answer[1]: missing (null); an answer must be a string or a list of strings",
                 id="null-in-list"),
    pytest.param({"text": [True]}, "answer.text[0]: an answer must be a string or a number, got bool",
                 id="bool-in-squad-dict"),
]


@pytest.mark.parametrize(("answer", "rule"), REFUSED)
def test_jsonl_malformed_answer_names_file_record_and_rule(tmp_path, answer, rule):
    ok = _qa("212 kg", qa_id="q0")
    message = _error(_jsonl_dir(tmp_path, [ok, _qa(answer)]))
    assert message == f"{tmp_path / 'qa.jsonl'}: record 2 (qa_id=q1): {rule}"


@pytest.mark.parametrize(("cell", "expected"), [
    pytest.param('["212 kg", "212"]', ["212 kg", "212"], id="json-list-string"),
    pytest.param("312", ["312"], id="plain-string"),
    pytest.param("212 kg", ["212 kg"], id="plain-words"),
])
def test_csv_answer_cells(tmp_path, cell, expected):
    pd.DataFrame([DOC]).to_csv(tmp_path / "documents.csv", index=False)
    pd.DataFrame([_qa(cell)]).to_csv(tmp_path / "qa.csv", index=False)
    assert _load(tmp_path).qa.iloc[0]["answer"] == expected


def test_csv_broken_json_list_is_named(tmp_path):
    pd.DataFrame([DOC]).to_csv(tmp_path / "documents.csv", index=False)
    pd.DataFrame([_qa('["212 kg", "212"')]).to_csv(tmp_path / "qa.csv", index=False)
    assert _error(tmp_path).startswith(f"{tmp_path / 'qa.csv'}: record 1 (qa_id=q1): answer: starts with '[' but is "
                                       f"not a JSON list")


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param(["212 kg", "212"], ["212 kg", "212"], id="list-column"),
    pytest.param("312", ["312"], id="string-column"),
])
def test_parquet_answer_columns(tmp_path, answer, expected):
    pd.DataFrame([DOC]).to_parquet(tmp_path / "documents.parquet", index=False)
    pd.DataFrame([_qa(answer)]).to_parquet(tmp_path / "qa.parquet", index=False)
    assert _load(tmp_path).qa.iloc[0]["answer"] == expected


def test_jsonl_string_starting_with_bracket_is_one_answer(tmp_path):
    """A JSON-native source writes lists as lists: a string is one answer, never parsed."""
    assert _load(_jsonl_dir(tmp_path, [_qa("[citation needed]")])).qa.iloc[0]["answer"] == ["[citation needed]"]


@pytest.mark.parametrize(("answer", "expected"), [
    pytest.param("312", ["312"], id="plain-string-column"),
    pytest.param(["212 kg", "212"], ["212 kg", "212"], id="list-column"),
])
def test_hf_tables_answer_column(tmp_path, answer, expected):
    from datasets import Dataset, DatasetDict

    DatasetDict({"documents": Dataset.from_list([DOC]), "qa": Dataset.from_list([_qa(answer)])}).save_to_disk(
        str(tmp_path / "hf"))
    assert _load(tmp_path / "hf").qa.iloc[0]["answer"] == expected


def test_hf_tables_nested_answers_are_refused(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"documents": Dataset.from_list([DOC]), "qa": Dataset.from_list([_qa([["212 kg"]])])}).save_to_disk(
        str(tmp_path / "hf"))
    assert _error(tmp_path / "hf") == (f"{tmp_path / 'hf' / 'qa'}: record 1 (qa_id=q1): answer[0]: must be a string, "
                                       f"got list (nested values are not answers)")


def test_hf_tables_need_both_documents_and_qa(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"documents": Dataset.from_list([DOC])}).save_to_disk(str(tmp_path / "hf"))
    assert _error(tmp_path / "hf") == (f"{tmp_path / 'hf'}: a DatasetDict of tables needs both 'documents' and 'qa'; "
                                       f"found ['documents']")


# --- SQuAD-shaped Hugging Face rows --------------------------------------------------------------------------------

CONTEXT = "The TideWatch T4 buoy weighs 212 kg and is 312 cm long."


def _hf_rows(tmp_path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset, DatasetDict

    path = tmp_path / "hf"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


def _row(i: int, answers: Any, **fields: Any) -> dict:
    return {"id": f"r{i}", "title": "T4", "context": CONTEXT, "question": f"Question {i} about the T4?",
            "answers": answers, **fields}


def test_hf_squad_rows_with_plain_string_answers_are_not_split_into_characters(tmp_path):
    ds = _load(_hf_rows(tmp_path, [_row(0, "312"), _row(1, "212 kg")]))
    assert ds.qa["answer"].tolist() == [["312"], ["212 kg"]]
    assert ds.qa["split"].tolist() == ["train", "train"]


def test_hf_squad_rows_with_squad_dict_answers(tmp_path):
    ds = _load(_hf_rows(tmp_path, [_row(0, {"text": ["212 kg", "212"], "answer_start": [29, 29]})]))
    assert ds.qa.iloc[0]["answer"] == ["212 kg", "212"]
    assert ds.documents["text"].tolist() == [CONTEXT]


def test_hf_squad_v2_rows_skip_flagged_unanswerable(tmp_path):
    rows = [_row(0, {"text": ["212 kg"], "answer_start": [29]}, is_impossible=False),
            _row(1, {"text": [], "answer_start": []}, is_impossible=True),
            _row(2, {"text": ["312 cm"], "answer_start": [43]}, is_impossible=False)]
    ds = _load(_hf_rows(tmp_path, rows))
    assert ds.qa["qa_id"].tolist() == ["r0", "r2"]
    assert ds.qa["split"].tolist() == ["train", "train"]
    assert ds.notes == ("skipped 1 unanswerable question (SQuAD v2 is_impossible)",)


def test_hf_squad_row_with_empty_answers_is_unanswerable_as_in_hf_squad_v2(tmp_path):
    rows = [_row(0, {"text": ["212 kg"], "answer_start": [29]}), _row(1, {"text": [], "answer_start": []})]
    dataset = _load(_hf_rows(tmp_path, rows))
    assert list(dataset.qa["qa_id"]) == ["r0"]
    assert dataset.notes == ("skipped 1 unanswerable question (SQuAD v2 is_impossible)",)


def test_hf_squad_rows_with_numeric_answers(tmp_path):
    assert _load(_hf_rows(tmp_path, [_row(0, 212)])).qa.iloc[0]["answer"] == ["212"]


def test_hf_squad_row_with_null_question_names_split_and_row(tmp_path):
    path = _hf_rows(tmp_path, [_row(0, "212 kg"), _row(1, "312", question=None)])
    assert _error(path) == f"{path}: split 'train' row 1 (id=r1).question: must be a non-empty string, got null"


def test_hf_squad_row_with_blank_answer_names_split_and_row(tmp_path):
    path = _hf_rows(tmp_path, [_row(0, "212 kg"), _row(1, " ")])
    assert _error(path) == f"{path}: split 'train' row 1 (id=r1).answers: blank answer; an answer needs some text"


# --- SQuAD JSON structure ------------------------------------------------------------------------------------------

GOOD_QA = {"id": "a", "question": QUESTION, "answers": [{"text": "212 kg", "answer_start": 29}]}
GOOD = {"version": "1.1", "data": [{"title": "Buoys", "paragraphs": [{"context": CONTEXT, "qas": [GOOD_QA]}]}]}


def _squad_with(edit) -> Any:
    """A copy of GOOD changed in place by `edit`, or replaced by what `edit` returns (a top-level list)."""
    payload = copy.deepcopy(GOOD)
    replaced = edit(payload)
    return payload if replaced is None else replaced


def _drop(obj: dict, key: str) -> None:
    del obj[key]


def _first_qa(payload: dict) -> dict:
    return payload["data"][0]["paragraphs"][0]["qas"][0]


Q = "data[0].paragraphs[0].qas[0]"
STRUCTURE = [
    pytest.param(lambda p: _drop(_first_qa(p)["answers"][0], "text"),
                 f"{Q}.answers[0]: missing 'text' (an answer dict needs it; keys: ['answer_start'])",
                 id="answer-without-text"),
    pytest.param(lambda p: p["data"][0].update(paragraphs={"context": CONTEXT}),
                 "data[0].paragraphs: must be a list, got dict", id="paragraphs-dict"),
    pytest.param(lambda p: p.update(data=["Buoys"]), "data[0]: must be an object, got str", id="data-of-strings"),
    pytest.param(lambda p: p.update(data={"title": "Buoys"}), "data: must be a list, got dict", id="data-dict"),
    pytest.param(lambda p: [p], "not SQuAD format: the top level must be an object with a 'data' list, got list",
                 id="top-level-list"),
    pytest.param(lambda p: _drop(p, "data"), "not SQuAD format: missing the top-level 'data' list", id="no-data"),
    pytest.param(lambda p: _first_qa(p).update(question=None), f"{Q}.question: must be a non-empty string, got null",
                 id="null-question"),
    pytest.param(lambda p: _first_qa(p).update(question=" "), f"{Q}.question: must be a non-empty string, got a "
                 "blank string", id="blank-question"),
    pytest.param(lambda p: _drop(_first_qa(p), "question"), f"{Q}: missing 'question'", id="no-question"),
    pytest.param(lambda p: p["data"][0].update(title=7), "data[0].title: must be a string, got int", id="title-int"),
    pytest.param(lambda p: p["data"][0]["paragraphs"][0].update(context=None),
                 "data[0].paragraphs[0].context: must be a string, got null", id="null-context"),
    pytest.param(lambda p: p["data"][0]["paragraphs"][0].update(qas={"id": "a"}),
                 "data[0].paragraphs[0].qas: must be a list, got dict", id="qas-dict"),
    pytest.param(lambda p: _first_qa(p).update(id=["a"]), f"{Q}.id: must be a non-empty string or an integer, "
                 "got list", id="id-list"),
    pytest.param(lambda p: _drop(_first_qa(p), "answers"), f"{Q}: missing 'answers'", id="no-answers"),
    pytest.param(lambda p: _first_qa(p).update(answers=[]), f"{Q}.answers: empty list; give an answer, or mark an "
                 "unanswerable question 'is_impossible': true (SQuAD v2)", id="empty-answers-without-flag"),
    pytest.param(lambda p: _first_qa(p).update(answers=[{"text": None}]),
                 f"{Q}.answers[0].text: missing (null); an answer must be a string or a list of strings",
                 id="null-answer-text"),
    pytest.param(lambda p: _first_qa(p).update(answers=["212 kg"]),
                 f"{Q}.answers[0]: must be an object with a 'text', got str", id="answers-as-strings"),
    pytest.param(lambda p: _first_qa(p).update(answers=[["212 kg"]]),
                 f"{Q}.answers[0]: must be an object with a 'text', got list", id="nested-answers"),
    pytest.param(lambda p: _first_qa(p).update(answers={"text": ["212 kg"]}),
                 f"{Q}.answers: must be a list, got dict", id="answers-dict"),
    pytest.param(lambda p: _first_qa(p).update(is_impossible="no"), f"{Q}.is_impossible: must be true or false, "
                 "got str", id="is-impossible-string"),
    pytest.param(lambda p: p["data"][0]["paragraphs"][0].update(qas=[]), "no questions found; nothing to "
                 "train or score on", id="no-questions"),
    pytest.param(lambda p: p.update(data=[]), "no questions found; nothing to train or score on", id="empty-data"),
]


@pytest.mark.parametrize(("edit", "rule"), STRUCTURE)
def test_squad_structure_error_names_file_path_and_rule(tmp_path, edit, rule):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(_squad_with(edit)))
    assert _error(path) == f"{path}: {rule}"


@pytest.mark.parametrize(("answers", "expected"), [
    pytest.param([{"text": "212 kg", "answer_start": 29}, {"text": "212 kg", "answer_start": 29}, {"text": "212"}],
                 ["212 kg", "212"], id="objects-deduplicated"),
    pytest.param([{"text": 212, "answer_start": 29}], ["212"], id="number-text"),
])
def test_squad_accepted_answer_shapes(tmp_path, answers, expected):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(_squad_with(lambda p: _first_qa(p).update(answers=answers))))
    assert _load(path).qa.iloc[0]["answer"] == expected


@pytest.mark.parametrize(("raw", "rule"), [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply to parse", id="deep-nesting"),
    pytest.param(b'{"data": [}', "not valid JSON (Expecting value; column 11)", id="syntax"),
    pytest.param(b'{"data":\n [{"title": "Caf\xe9"}]}',  # offset: 9 bytes of line 1 (newline included) + 16
                 "not UTF-8 text: byte 0xe9 at byte offset 25 (line 2); save the file as UTF-8", id="latin-1"),
])
def test_squad_unparsable_file_is_named(tmp_path, raw, rule):
    path = tmp_path / "squad.json"
    path.write_bytes(raw)
    assert _error(path) == f"{path}: {rule}"


# --- SQuAD v2 unanswerable questions -------------------------------------------------------------------------------

def _v2(extra_qas: list[dict]) -> dict:
    return _squad_with(lambda p: p["data"][0]["paragraphs"][0]["qas"].extend(extra_qas))


UNANSWERABLE = [
    {"id": "u1", "question": "What colour is the T4?", "answers": [], "is_impossible": True,
     "plausible_answers": [{"text": "yellow", "answer_start": 0}]},
    {"id": "u2", "question": "Who built the T4?", "answers": [], "is_impossible": False},
    {"id": "u3", "question": "Where is the T4 moored?", "is_impossible": True},
]


def test_squad_v2_skips_unanswerable_and_says_so(tmp_path):
    path = tmp_path / "squad.json"  # one path for both: a document's source is its file
    path.write_text(json.dumps(GOOD))
    answerable_only = _load(path)
    path.write_text(json.dumps(_v2(UNANSWERABLE)))
    ds = _load(path)
    assert ds.qa["qa_id"].tolist() == ["a"]
    assert ds.notes == ("skipped 3 unanswerable questions (SQuAD v2 is_impossible)",)
    assert answerable_only.notes == ()
    assert ds.fingerprint == answerable_only.fingerprint  # skipping leaves the tables as if the questions were absent


def test_squad_v2_all_unanswerable_is_an_error(tmp_path):
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(_squad_with(lambda p: p["data"][0]["paragraphs"][0].update(qas=UNANSWERABLE))))
    assert _error(path) == (f"{path}: all 3 questions are unanswerable (SQuAD v2 is_impossible); nothing to train "
                            f"or score on")


# --- BOMs and encodings --------------------------------------------------------------------------------------------

def _with_bom(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "squad", "feedback"])
def test_utf8_bom_is_accepted_everywhere(tmp_path, fmt):
    cfg: dict[str, Any] = {}
    if fmt == "squad":
        path = tmp_path / "squad.json"
        path.write_text(json.dumps(GOOD))
        _with_bom(path)
    elif fmt == "csv":
        path = tmp_path
        pd.DataFrame([DOC]).to_csv(path / "documents.csv", index=False)
        pd.DataFrame([_qa('["212 kg"]')]).to_csv(path / "qa.csv", index=False)
        _with_bom(path / "documents.csv")
        _with_bom(path / "qa.csv")
    else:
        path = _jsonl_dir(tmp_path, [_qa(["212 kg"])])
        feedback = write_jsonl(tmp_path / "feedback.jsonl", [_qa(["212 kg"], qa_id="feedback-1")])
        _with_bom(feedback if fmt == "feedback" else path / "qa.jsonl")
        _with_bom(path / "documents.jsonl")
        cfg = {"feedback_path": feedback} if fmt == "feedback" else {}
    ds = _load(path, **cfg)
    assert ds.qa["answer"].tolist()[0] == ["212 kg"]
    assert ds.qa["qa_id"].tolist() == (["q1", "feedback-1"] if fmt == "feedback" else ["a" if fmt == "squad" else "q1"])
    assert "\ufeff" not in ds.documents.iloc[0]["doc_id"] + ds.documents.iloc[0]["title"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_non_utf8_table_names_file_and_byte(tmp_path, fmt):
    docs = tmp_path / f"documents.{fmt}"
    if fmt == "jsonl":
        write_jsonl(tmp_path / "qa.jsonl", [_qa("212 kg")])
        docs.write_bytes(b'{"doc_id": "d1", "title": "Caf\xe9", "text": "x"}\n')
    else:
        pd.DataFrame([_qa("212 kg")]).to_csv(tmp_path / "qa.csv", index=False)
        docs.write_bytes(b"doc_id,title,text\nd1,Caf\xe9,x\n")
    offset = docs.read_bytes().index(b"\xe9")
    line = 1 if fmt == "jsonl" else 2
    assert _error(tmp_path) == (f"{docs}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line {line}); save the "
                                f"file as UTF-8")


def test_deeply_nested_jsonl_line_is_named(tmp_path):
    path = _jsonl_dir(tmp_path, [_qa("212 kg")])
    (path / "qa.jsonl").write_text(json.dumps(_qa("212 kg")) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _error(path) == f"{path / 'qa.jsonl'}:2: JSON nested too deeply to parse"


def test_feedback_errors_name_the_feedback_file(tmp_path):
    path = _jsonl_dir(tmp_path, [_qa("212 kg")])
    feedback = write_jsonl(tmp_path / "feedback.jsonl", [_qa(None, qa_id="feedback-1")])
    assert _error(path, feedback_path=feedback) == (f"{feedback}: record 1 (qa_id=feedback-1): answer: missing "
                                                    f"(null); an answer must be a string or a list of strings")


def test_empty_feedback_file_adds_nothing(tmp_path):
    path = _jsonl_dir(tmp_path, [_qa("212 kg")])
    (tmp_path / "feedback.jsonl").write_text("")
    assert _load(path, feedback_path=tmp_path / "feedback.jsonl").qa["qa_id"].tolist() == ["q1"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_empty_table_file_is_named(tmp_path, fmt):
    (tmp_path / f"documents.{fmt}").write_text("doc_id,title,text\n" if fmt == "csv" else "\n")
    (tmp_path / f"qa.{fmt}").write_text("")
    assert _error(tmp_path) == f"{tmp_path / f'documents.{fmt}'}: empty (no records)"


# --- required text fields ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "field", "value", "rule"), [
    pytest.param("qa", "question", ["How heavy?"], "record 1 (qa_id=q1): question: must be a string, got list",
                 id="question-list"),
    pytest.param("qa", "doc_id", {"id": "d1"}, "record 1 (qa_id=q1): doc_id: must be a string, got dict",
                 id="doc-id-dict"),
    pytest.param("documents", "text", True, "record 1 (doc_id=d1): text: must be a string, got bool", id="text-bool"),
])
def test_non_text_in_required_text_field_is_refused(tmp_path, table, field, value, rule):
    qa, docs = [_qa("212 kg")], [dict(DOC)]
    (qa if table == "qa" else docs)[0][field] = value
    path = _jsonl_dir(tmp_path, qa, docs)
    assert _error(path) == f"{path / f'{table}.jsonl'}: {rule}"


def test_numeric_ids_become_strings(tmp_path):
    pd.DataFrame([{**DOC, "doc_id": 7}]).to_parquet(tmp_path / "documents.parquet", index=False)
    pd.DataFrame([_qa(np.array(["212 kg"]), qa_id=1, doc_id=7)]).to_parquet(tmp_path / "qa.parquet", index=False)
    ds = _load(tmp_path)
    assert ds.qa.iloc[0][["qa_id", "doc_id"]].tolist() == ["1", "7"]
    assert ds.documents.iloc[0]["doc_id"] == "7"


def test_null_question_and_empty_answer_list_are_validation_rules(tmp_path):
    """A missing question or an empty answer list loads, and the validation suite reports it by rule (a row rule
    that quarantine can waive), instead of the loader stopping the run."""
    from tasks.validation import validate_dataset

    ds = _load(_jsonl_dir(tmp_path, [_qa("212 kg", question=None), _qa([], qa_id="q2")]))
    assert ds.qa["question"].tolist() == [None, QUESTION]
    assert ds.qa["answer"].tolist() == [["212 kg"], []]
    report = validate_dataset(ds.documents, ds.qa, ValidationConfig(), ds.source)
    examples = {f.rule: f.examples for f in report.failures}
    assert examples["question is present (not null)"] == ["qa_id=q1: question=None"]
    assert examples["answer list is not empty"] == ["qa_id=q2: no accepted answer ([])"]


def test_a_squad_file_read_from_another_path_is_the_same_data(tmp_path, monkeypatch):
    from tasks.data_loading import fingerprint_documents, fingerprint_qa

    payload = {"data": [{"title": "T", "paragraphs": [{"context": "Oslo is in Norway.", "qas": [
        {"id": "q1", "question": "Where is Oslo?", "answers": [{"text": "Norway", "answer_start": 11}]}]}]}]}
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "set.json").write_text(json.dumps(payload))
    monkeypatch.chdir(tmp_path)
    loaded = [load_dataset(DataConfig(path=p)) for p in (tmp_path / "a" / "set.json", Path("a/set.json"),
                                                         tmp_path / "b" / "set.json")]
    assert len({fingerprint_documents(d.documents) for d in loaded}) == 1  # the index and adapters are reused
    assert len({fingerprint_qa(d.qa) for d in loaded}) == 1
