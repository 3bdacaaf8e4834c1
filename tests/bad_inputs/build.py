"""The bad inputs that cannot be written by hand in cases.yaml: binary files (Parquet, Latin-1 bytes), 100000 nested
lists, and Hugging Face `datasets` directories (written with `save_to_disk`, as a user's pipeline would).

Each builder writes into a case's data directory, starting from the valid base data (tests/bad_inputs/base)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = HERE / "base"
NESTING_DEPTH = 100_000  # far beyond any JSON parser's recursion limit


def _base_records(name: str) -> list[dict]:
    return [json.loads(line) for line in (BASE / "tables" / name).read_text(encoding="utf-8").splitlines()]


def _squad_rows() -> list[dict]:
    """The base SQuAD file as flat rows, the shape of a Hugging Face `squad` dataset."""
    payload = json.loads((BASE / "squad.json").read_text(encoding="utf-8"))
    return [{"id": qa["id"], "title": article["title"], "context": para["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in payload["data"] for para in article["paragraphs"] for qa in para["qas"]]


def _columns(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _save(dataset, path: Path) -> None:
    """save_to_disk without its progress bar (a case's output is the command's, not the builder's); the switch is
    restored, so the command under test shows whatever bars it shows."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    enabled = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if enabled:
            enable_progress_bar()


def qa_latin1_line_13(data: Path) -> None:
    """qa.jsonl whose line 13 is encoded in Latin-1 (an "é" becomes the lone byte 0xE9)."""
    lines = (data / "qa.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[12])
    record["question"] = "Who receives passports left in the café?"
    lines[12] = json.dumps(record, ensure_ascii=False) + "\n"
    (data / "qa.jsonl").write_bytes(b"".join(line.encode("latin-1" if i == 12 else "utf-8")
                                             for i, line in enumerate(lines)))


def parquet_bool_answers(data: Path) -> None:
    """documents.parquet as in the base data; qa.parquet with booleans in the answer column."""
    import pandas as pd

    pd.DataFrame(_base_records("documents.jsonl")).to_parquet(data / "documents.parquet", index=False)
    qa = pd.DataFrame(_base_records("qa.jsonl"))
    qa["answer"] = [i % 2 == 0 for i in range(len(qa))]
    qa.to_parquet(data / "qa.parquet", index=False)


def deep_nesting_json(data: Path) -> None:
    (data / "deep_nesting.json").write_text('{"version": "1.1", "data": ' + "[" * NESTING_DEPTH + "]" * NESTING_DEPTH
                                            + "}")


def hf_no_answers(data: Path) -> None:
    from datasets import Dataset

    rows = [{k: v for k, v in row.items() if k != "answers"} for row in _squad_rows()]
    _save(Dataset.from_dict(_columns(rows)), data / "hf_no_answers")


def hf_bool_answers(data: Path) -> None:
    from datasets import Dataset

    rows = [{**row, "answers": i % 2 == 0} for i, row in enumerate(_squad_rows())]
    _save(Dataset.from_dict(_columns(rows)), data / "hf_bool_answers")


def hf_answers_without_text(data: Path) -> None:
    """SQuAD-shaped rows whose answers struct keeps answer_start and lost its text."""
    from datasets import Dataset

    rows = [{**row, "answers": {"answer_start": row["answers"]["answer_start"]}} for row in _squad_rows()]
    _save(Dataset.from_dict(_columns(rows)), data / "hf_answers_without_text")


def hf_tables_without_answer(data: Path) -> None:
    """A DatasetDict with the contract's two tables, its qa table lacking the answer column."""
    from datasets import Dataset, DatasetDict

    qa = [{k: v for k, v in row.items() if k != "answer"} for row in _base_records("qa.jsonl")]
    _save(DatasetDict({"documents": Dataset.from_dict(_columns(_base_records("documents.jsonl"))),
                       "qa": Dataset.from_dict(_columns(qa))}), data / "hf_tables")


BUILDERS: dict[str, Callable[[Path], None]] = {f.__name__: f for f in (
    qa_latin1_line_13, parquet_bool_answers, deep_nesting_json, hf_no_answers, hf_bool_answers,
    hf_answers_without_text, hf_tables_without_answer)}


def build(name: str, data: Path) -> None:
    """Write the named generated input into `data`."""
    BUILDERS[name](data)
