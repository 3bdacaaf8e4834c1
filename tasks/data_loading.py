"""Load stage: read any supported source and normalise it to the two tables of the data contract
(tasks.schema).

Supported sources: a directory holding `documents` + `qa` files (JSONL, CSV or Parquet), a
SQuAD-format JSON file (paragraphs become documents; split assigned by a stable hash; SQuAD v2's
unanswerable questions skipped and counted in `Dataset.notes`), and a Hugging Face `datasets`
directory (a DatasetDict with `documents` and `qa`, or SQuAD-shaped rows). Every source's answers
go through one normaliser (tasks.load_values), text files may start with a UTF-8 BOM, and malformed
input is a DataLoadError naming the file, the record and the rule.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.load_values import DataLoadError, is_missing, normalise_answers, parse_json, read_utf8, required_text
from tasks.schema import DOC_COLUMNS, OPTIONAL_DOC_COLUMNS, QA_COLUMNS, REQUIRED_DOC_COLUMNS
from tasks.settings import DataConfig
from tasks.squad_format import SquadTables, assign_split, hf_rows_to_tables, read_squad, squad_to_tables, unit_hash

__all__ = ["DataLoadError", "Dataset", "assign_split", "fingerprint_documents", "fingerprint_qa",
           "fingerprint_tables", "load_dataset", "normalise_tables"]

TABLE_SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
JSON_LIST_SUFFIXES = (".csv", ".parquet")  # flat tables: a list of answers may be written as a JSON string
HF_SQUAD_COLUMNS = ["context", "question", "answers"]


@dataclass(frozen=True)
class Dataset:
    documents: pd.DataFrame
    qa: pd.DataFrame
    fingerprint: str
    source: str
    notes: tuple[str, ...] = ()  # what the loader left out and why (e.g. SQuAD v2 unanswerable questions)
    files: tuple[tuple[str, str], ...] = ()  # (table, the file it was read from), for messages

    def split(self, name: str, limit: int | None = None) -> pd.DataFrame:
        """QA rows of one split, optionally the first `limit` by a stable hash of qa_id."""
        rows = self.qa[self.qa["split"] == name]
        if limit is not None and len(rows) > limit:
            order = rows["qa_id"].map(lambda q: unit_hash(f"cap:{q}"))
            rows = rows.loc[order.sort_values(kind="stable").index[:limit]]
        return rows.reset_index(drop=True)

    def doc_text(self) -> dict[str, str]:
        return dict(zip(self.documents["doc_id"], self.documents["text"], strict=True))


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}:{lineno}")
        if not isinstance(record, dict):
            raise DataLoadError(f"{path}:{lineno}: each line must be a JSON object")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_table(path: Path, allow_empty: bool = False) -> pd.DataFrame:
    """One table file as read; an empty one is an error unless `allow_empty` (the feedback file may be)."""
    try:
        if path.suffix == ".jsonl":
            table = _read_jsonl(path)
        elif path.suffix == ".csv":
            text = read_utf8(path)
            table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False) if text.strip() else None
        else:
            table = pd.read_parquet(path)
    except DataLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes a named load error
        raise DataLoadError(f"{path}: cannot be read as {path.suffix[1:]} ({err})") from None
    if table is None or len(table) == 0:
        if not allow_empty:
            raise DataLoadError(f"{path}: empty (no records)")
        return pd.DataFrame(columns=list(QA_COLUMNS))
    return table


def _require_columns(columns: Sequence[str], required: Sequence[str], path: Path | str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataLoadError(f"{path}: missing required column(s) {missing}; found {list(columns)}")


def _record(path: Path | str, row: int, key: str, ident: Any) -> str:
    return f"{path}: record {row + 1} ({key}={ident})"


def _text_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path | str, key: str) -> None:
    """Required text columns in place: strings kept, numbers as strings, missing as None; a list, dict or
    bool is refused naming the file, the record and the field."""
    for col in columns:
        frame[col] = pd.Series([v if isinstance(v, str) else required_text(v, f"{_record(path, i, key, ident)}: {col}")
                                for i, (v, ident) in enumerate(zip(frame[col], frame[key], strict=True))],
                               index=frame.index, dtype=object)


def _optional_text(value: Any) -> str | None:
    """An optional column's value as text; missing and empty (how CSV writes a missing value) are None."""
    return None if is_missing(value) or value == "" else str(value)


def _normalise_qa(qa: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    _require_columns(list(qa.columns), QA_COLUMNS, path)
    qa = qa[list(QA_COLUMNS)].reset_index(drop=True)
    _text_columns(qa, ("qa_id", "question", "doc_id", "split"), path, "qa_id")
    json_lists = Path(path).suffix in JSON_LIST_SUFFIXES
    qa["answer"] = pd.Series([normalise_answers(v, f"{_record(path, i, 'qa_id', qid)}: answer", json_lists)
                              for i, (v, qid) in enumerate(zip(qa["answer"], qa["qa_id"], strict=True))],
                             dtype=object)
    return qa


def normalise_tables(docs: pd.DataFrame, qa: pd.DataFrame, doc_path: Path | str, qa_path: Path | str) -> tuple[
    pd.DataFrame, pd.DataFrame
]:
    """Coerce raw tables to the contract's columns and types; ids become strings, answers lists."""
    _require_columns(list(docs.columns), REQUIRED_DOC_COLUMNS, doc_path)
    docs = docs.reset_index(drop=True)
    for col in OPTIONAL_DOC_COLUMNS:
        if col not in docs.columns:
            docs[col] = None
    docs = docs[list(DOC_COLUMNS)].copy()
    _text_columns(docs, REQUIRED_DOC_COLUMNS, doc_path, "doc_id")
    for col in OPTIONAL_DOC_COLUMNS:
        docs[col] = docs[col].map(_optional_text).astype(object)
    return docs, _normalise_qa(qa, qa_path)


def _find_table(directory: Path, stem: str, fmt: str) -> Path:
    suffixes = [TABLE_SUFFIXES[fmt]] if fmt in TABLE_SUFFIXES else list(TABLE_SUFFIXES.values())
    found = [directory / f"{stem}{s}" for s in suffixes if (directory / f"{stem}{s}").is_file()]
    if not found:
        raise DataLoadError(f"{directory}: no {stem} file found (looked for {[stem + s for s in suffixes]})")
    return found[0]


def _load_hf(directory: Path, cfg: DataConfig) -> tuple[SquadTables, Path, Path]:
    """A DatasetDict with `documents` and `qa` as raw tables, or SQuAD-shaped rows as SQuAD tables; with the
    paths that name the documents and the QA rows in messages."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(directory))
    except Exception as err:  # noqa: BLE001
        raise DataLoadError(f"{directory}: not a Hugging Face datasets directory written by save_to_disk "
                            f"({err})") from None
    if isinstance(loaded, DatasetDict) and {"documents", "qa"} & set(loaded):
        if not {"documents", "qa"} <= set(loaded):
            raise DataLoadError(f"{directory}: a DatasetDict of tables needs both 'documents' and 'qa'; found "
                                f"{sorted(loaded)}")
        tables = SquadTables(loaded["documents"].to_pandas(), loaded["qa"].to_pandas())
        return tables, directory / "documents", directory / "qa"
    parts = list(loaded.items()) if isinstance(loaded, DatasetDict) else [(None, loaded)]
    for name, part in parts:
        _require_columns(part.column_names, HF_SQUAD_COLUMNS, directory / name if name else directory)
    return hf_rows_to_tables(parts, directory, cfg), directory, directory


def fingerprint_tables(docs: pd.DataFrame, qa: pd.DataFrame) -> str:
    """Content hash of the normalised tables (order-independent)."""
    h = hashlib.sha256()
    for df, key in ((docs, "doc_id"), (qa, "qa_id")):
        records = df.sort_values(key, kind="stable").to_dict(orient="records")
        h.update(json.dumps(records, sort_keys=True, ensure_ascii=False, default=str).encode())
    return h.hexdigest()[:16]


def fingerprint_documents(docs: pd.DataFrame) -> str:
    """Content hash of the documents alone: what the index stands for."""
    return fingerprint_tables(docs, pd.DataFrame(columns=["qa_id"]))


def fingerprint_qa(*parts: pd.DataFrame) -> str:
    """Content hash of QA rows alone (order-independent): what a stage that reads no document depends on."""
    qa = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(QA_COLUMNS))
    return fingerprint_tables(pd.DataFrame(columns=["doc_id"]), qa)


def _detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".json":
            return "squad"
        raise DataLoadError(f"{path}: a single file must be SQuAD-format .json; give a directory for table pairs")
    if not path.is_dir():
        raise DataLoadError(f"{path}: no such file or directory")
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return "hf"
    for fmt, suffix in TABLE_SUFFIXES.items():
        if (path / f"documents{suffix}").is_file():
            return fmt
    raise DataLoadError(f"{path}: no documents.(jsonl|csv|parquet), SQuAD .json or HF datasets directory found")


def load_dataset(cfg: DataConfig, path: Path | None = None) -> Dataset:
    """Load and normalise the configured source; does not validate content (see tasks.validation)."""
    path = Path(path or cfg.path)
    fmt = _detect_format(path) if cfg.format == "auto" else cfg.format
    if fmt == "squad":
        tables, doc_path, qa_path = squad_to_tables(read_squad(path), path, cfg), path, path
    elif fmt == "hf":
        tables, doc_path, qa_path = _load_hf(path, cfg)
    else:
        doc_path, qa_path = _find_table(path, "documents", fmt), _find_table(path, "qa", fmt)
        tables = SquadTables(_read_table(doc_path), _read_table(qa_path))
    docs, qa = normalise_tables(tables.documents, tables.qa, doc_path, qa_path)
    if cfg.feedback_path is not None and Path(cfg.feedback_path).is_file():
        # Corrected answers from the gateway's feedback (tasks.feedback_data): training rows only, never test.
        feedback_path = Path(cfg.feedback_path)
        feedback = _normalise_qa(_read_table(feedback_path, allow_empty=True).assign(split="train"), feedback_path)
        qa = pd.concat([qa, feedback], ignore_index=True) if len(feedback) else qa
    return Dataset(documents=docs, qa=qa, fingerprint=fingerprint_tables(docs, qa), source=str(path),
                   notes=tables.notes, files=(("documents", str(doc_path)), ("qa", str(qa_path))))
