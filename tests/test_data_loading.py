import json

import pandas as pd
import pytest

from tasks.data_loading import DataLoadError, assign_split, load_dataset
from tasks.settings import DataConfig
from tests.conftest import XQUAD, write_jsonl

DOCS = [{"doc_id": "d1", "title": "T4", "text": "The TideWatch T4 buoy weighs 212 kg."},
        {"doc_id": "d2", "title": "Office", "text": "The Kellsport office opens at 8 am.", "source": "hb/office.md"}]
QA = [{"qa_id": "q1", "question": "How heavy is the T4?", "answer": ["212 kg"], "doc_id": "d1", "split": "train"},
      {"qa_id": "q2", "question": "When does Kellsport open?", "answer": "8 am", "doc_id": "d2", "split": "test"}]


def _cfg(path) -> DataConfig:
    return DataConfig(path=path)


def test_jsonl_csv_parquet_normalise_to_the_same_tables(tmp_path):
    fps = []
    for fmt in ("jsonl", "csv", "parquet"):
        d = tmp_path / fmt
        d.mkdir()
        if fmt == "jsonl":
            write_jsonl(d / "documents.jsonl", DOCS)
            write_jsonl(d / "qa.jsonl", QA)
        else:
            qa = pd.DataFrame(QA).assign(answer=lambda f: f["answer"].map(lambda a: json.dumps(a if isinstance(a, list)
                                                                                               else [a])))
            docs = pd.DataFrame(DOCS)
            getattr(docs, f"to_{fmt}")(d / f"documents.{fmt}", index=False)
            getattr(qa, f"to_{fmt}")(d / f"qa.{fmt}", index=False)
        ds = load_dataset(_cfg(d))
        assert list(ds.qa["answer"]) == [["212 kg"], ["8 am"]]
        assert list(ds.documents.columns) == ["doc_id", "title", "text", "source", "updated_at"]
        fps.append(ds.fingerprint)
    assert len(set(fps)) == 1


def test_fingerprint_changes_with_content(tmp_path):
    write_jsonl(tmp_path / "documents.jsonl", DOCS)
    write_jsonl(tmp_path / "qa.jsonl", QA)
    before = load_dataset(_cfg(tmp_path)).fingerprint
    write_jsonl(tmp_path / "documents.jsonl", [{**DOCS[0], "text": "The T4 weighs 213 kg."}, DOCS[1]])
    assert load_dataset(_cfg(tmp_path)).fingerprint != before


def test_bad_json_line_names_file_and_line(tmp_path):
    write_jsonl(tmp_path / "documents.jsonl", DOCS)
    (tmp_path / "qa.jsonl").write_text(json.dumps(QA[0]) + "\n{not json\n")
    with pytest.raises(DataLoadError, match=r"qa\.jsonl:2: not valid JSON"):
        load_dataset(_cfg(tmp_path))


def test_missing_column_is_named(tmp_path):
    write_jsonl(tmp_path / "documents.jsonl", [{"doc_id": "d1", "title": "x"}])
    write_jsonl(tmp_path / "qa.jsonl", QA)
    with pytest.raises(DataLoadError, match=r"documents\.jsonl: missing required column\(s\) \['text'\]"):
        load_dataset(_cfg(tmp_path))


def test_bad_answer_type_names_record(tmp_path):
    write_jsonl(tmp_path / "documents.jsonl", DOCS)
    write_jsonl(tmp_path / "qa.jsonl", [{**QA[0], "answer": True}])  # a number is accepted (its string); a bool not
    with pytest.raises(DataLoadError, match=r"record 1 \(qa_id=q1\)"):
        load_dataset(_cfg(tmp_path))


def test_squad_json_paragraphs_become_documents(tmp_path):
    payload = {"version": "1.1", "data": [{"title": "Buoys", "paragraphs": [
        {"context": "The T4 weighs 212 kg.", "qas": [
            {"id": "a", "question": "How heavy?", "answers": [{"text": "212 kg", "answer_start": 14},
                                                             {"text": "212 kg", "answer_start": 14}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(payload))
    ds = load_dataset(_cfg(path))
    assert ds.documents["doc_id"].tolist() == ["buoys-p000"]
    assert ds.qa.iloc[0]["answer"] == ["212 kg"]
    assert ds.qa.iloc[0]["split"] in {"train", "validation", "test"}


def test_hf_datasets_directory(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"documents": Dataset.from_list(DOCS), "qa": Dataset.from_list(
        [{**q, "answer": q["answer"] if isinstance(q["answer"], list) else [q["answer"]]} for q in QA])}
    ).save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(_cfg(tmp_path / "hf"))
    assert ds.qa["qa_id"].tolist() == ["q1", "q2"]
    assert ds.qa.iloc[1]["answer"] == ["8 am"]


def test_split_assignment_is_stable_and_proportional():
    fractions = {"train": 0.7, "validation": 0.1, "test": 0.2}
    splits = [assign_split(f"k{i}", fractions) for i in range(2000)]
    assert splits == [assign_split(f"k{i}", fractions) for i in range(2000)]
    assert 0.65 < splits.count("train") / 2000 < 0.75


@pytest.mark.skipif(not XQUAD.exists(), reason="shared XQuAD file absent")
def test_xquad_loads_by_question_and_by_document():
    by_q = load_dataset(DataConfig(path=XQUAD))
    assert len(by_q.documents) == 240 and len(by_q.qa) == 1190
    by_doc = load_dataset(DataConfig(path=XQUAD, split_by="document"))
    per_doc = by_doc.qa.groupby("doc_id")["split"].nunique()
    assert (per_doc == 1).all()


def test_demo_data_is_well_formed():
    ds = load_dataset(DataConfig(path="data/demo"))
    assert len(ds.documents) >= 40 and len(ds.qa) >= 300
    assert set(ds.qa["split"]) == {"train", "validation", "test"}


def test_squad_repeated_question_lands_in_one_split(tmp_path):
    paragraphs = [{"context": f"Tesla died in 194{i}.", "qas": [
        {"id": f"q{i}", "question": "What year did Tesla die? " if i % 2 else "What year did Tesla die?",
         "answers": [{"text": f"194{i}", "answer_start": 14}]}]} for i in range(10)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "Tesla", "paragraphs": paragraphs}]}))
    assert load_dataset(_cfg(path)).qa["split"].nunique() == 1


def test_squad_rewordings_with_the_same_paragraph_and_answer_land_in_one_split(tmp_path):
    """Split by question, a reworded question about the same fact goes with the original (no leak across splits);
    questions with other answers in that paragraph are split on their own."""
    context = "The firm employed 312 people in 2019 and opened 14 shops."
    rewordings = [f"How many {who} did the firm employ in 2019?" for who in
                  ("people", "staff", "workers", "employees", "persons", "hands", "clerks", "souls")]
    qas = [{"id": f"r{i}", "question": q, "answers": [{"text": "312", "answer_start": 18}]}
           for i, q in enumerate(rewordings)]
    qas += [{"id": f"o{i}", "question": f"Question {i} about the shops?", "answers": [{"text": f"{i} shops"}]}
            for i in range(40)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "Firm", "paragraphs": [{"context": context, "qas": qas}]}]}))
    qa = load_dataset(_cfg(path)).qa.set_index("qa_id")
    assert qa.loc[[f"r{i}" for i in range(8)], "split"].nunique() == 1
    assert qa.loc[[f"o{i}" for i in range(40)], "split"].nunique() == 3
