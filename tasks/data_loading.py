"""Load stage: read any supported source and normalise it to the two tables of the data contract
(tasks.schema).

Supported sources: a directory holding `documents` + `qa` files (JSONL, CSV or Parquet), a
SQuAD-format JSON file (paragraphs become documents; split assigned by a stable hash), and a
Hugging Face `datasets` directory (a DatasetDict with `documents` and `qa`, or SQuAD-shaped rows).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import UserError
from tasks.schema import DOC_COLUMNS, OPTIONAL_DOC_COLUMNS, QA_COLUMNS, REQUIRED_DOC_COLUMNS, SPLITS
from tasks.settings import DataConfig
from tasks.text import normalize_answer

TABLE_SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}


class DataLoadError(UserError, ValueError):
    """The input cannot be read into the data contract; the message names file, record and rule."""


@dataclass(frozen=True)
class Dataset:
    documents: pd.DataFrame
    qa: pd.DataFrame
    fingerprint: str
    source: str

    def split(self, name: str, limit: int | None = None) -> pd.DataFrame:
        """QA rows of one split, optionally the first `limit` by a stable hash of qa_id."""
        rows = self.qa[self.qa["split"] == name]
        if limit is not None and len(rows) > limit:
            order = rows["qa_id"].map(lambda q: _unit_hash(f"cap:{q}"))
            rows = rows.loc[order.sort_values(kind="stable").index[:limit]]
        return rows.reset_index(drop=True)

    def doc_text(self) -> dict[str, str]:
        return dict(zip(self.documents["doc_id"], self.documents["text"], strict=True))


def _unit_hash(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def assign_split(key: str, fractions: dict[str, float]) -> str:
    """Deterministic split from a stable hash of `key`."""
    u, edge = _unit_hash(key), 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1]


def _as_answer_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataLoadError(f"{where}: answer looks like a JSON list but does not parse ({err})") from None
        else:
            return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataLoadError(f"{where}: answer must be a string or a list of strings, got {type(value).__name__}")


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataLoadError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataLoadError(f"{path}:{lineno}: each line must be a JSON object")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except DataLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes a named load error
        raise DataLoadError(f"{path}: cannot be read as {path.suffix[1:]} ({err})") from None


def _require_columns(df: pd.DataFrame, required: list[str], path: Path | str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLoadError(f"{path}: missing required column(s) {missing}; found {list(df.columns)}")


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)


def normalise_tables(docs: pd.DataFrame, qa: pd.DataFrame, doc_path: Path | str, qa_path: Path | str) -> tuple[
    pd.DataFrame, pd.DataFrame
]:
    """Coerce raw tables to the contract's columns and types; ids become strings, answers lists."""
    _require_columns(docs, list(REQUIRED_DOC_COLUMNS), doc_path)
    _require_columns(qa, list(QA_COLUMNS), qa_path)
    docs = docs.copy()
    for col in OPTIONAL_DOC_COLUMNS:
        if col not in docs.columns:
            docs[col] = None
    docs = docs[list(DOC_COLUMNS)]
    for col in DOC_COLUMNS:
        docs[col] = docs[col].map(_as_text).astype(object)
    for col in OPTIONAL_DOC_COLUMNS:  # CSV writes a missing optional value as ""
        docs[col] = docs[col].map(lambda v: v or None).astype(object)
    qa = qa[list(QA_COLUMNS)].copy()
    for col in ("qa_id", "question", "doc_id", "split"):
        qa[col] = qa[col].map(_as_text).astype(object)
    qa["answer"] = [
        _as_answer_list(v, f"{qa_path}: record {i + 1} (qa_id={qid})")
        for i, (v, qid) in enumerate(zip(qa["answer"], qa["qa_id"], strict=True))
    ]
    return docs.reset_index(drop=True), qa.reset_index(drop=True)


def _find_table(directory: Path, stem: str, fmt: str) -> Path:
    suffixes = [TABLE_SUFFIXES[fmt]] if fmt in TABLE_SUFFIXES else list(TABLE_SUFFIXES.values())
    found = [directory / f"{stem}{s}" for s in suffixes if (directory / f"{stem}{s}").is_file()]
    if not found:
        raise DataLoadError(f"{directory}: no {stem} file found (looked for {[stem + s for s in suffixes]})")
    return found[0]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "doc"


def squad_to_tables(payload: dict[str, Any], path: Path | str, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SQuAD v1.1 JSON: each paragraph a document, each question a QA pair, split by stable hash."""
    if not isinstance(payload.get("data"), list):
        raise DataLoadError(f"{path}: not SQuAD format (top-level 'data' list missing)")
    docs, qas = [], []
    for a_idx, article in enumerate(payload["data"]):
        title = str(article.get("title", f"article-{a_idx}"))
        for p_idx, para in enumerate(article.get("paragraphs", [])):
            doc_id = f"{_slug(title)}-p{p_idx:03d}"
            if "context" not in para:
                raise DataLoadError(f"{path}: data[{a_idx}].paragraphs[{p_idx}] has no 'context'")
            docs.append({"doc_id": doc_id, "title": title, "text": para["context"], "source": str(path)})
            for q_idx, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a_idx}].paragraphs[{p_idx}].qas[{q_idx}]"
                if "question" not in qa or not qa.get("answers"):
                    raise DataLoadError(f"{where}: needs 'question' and a non-empty 'answers' list")
                answers = list(dict.fromkeys(str(ans["text"]) for ans in qa["answers"]))
                qa_id = str(qa.get("id", f"{doc_id}-q{q_idx}"))
                # Keyed by the normalised question, so a question repeated elsewhere lands in the same split.
                split_key = normalize_answer(qa["question"]) if cfg.split_by == "question" else doc_id
                qas.append({
                    "qa_id": qa_id, "question": qa["question"], "answer": answers, "doc_id": doc_id,
                    "split": assign_split(f"split:{split_key}", cfg.split_fractions),
                })
    return pd.DataFrame(docs), pd.DataFrame(qas)


def _load_hf(directory: Path, cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(directory))
    except Exception as err:  # noqa: BLE001
        raise DataLoadError(f"{directory}: not a Hugging Face datasets directory ({err})") from None
    if isinstance(loaded, DatasetDict) and {"documents", "qa"} <= set(loaded):
        return loaded["documents"].to_pandas(), loaded["qa"].to_pandas()
    parts = loaded.items() if isinstance(loaded, DatasetDict) else [(None, loaded)]
    articles: dict[str, dict[str, Any]] = {}
    for split_name, part in parts:
        _require_columns(part.to_pandas().head(0), ["context", "question", "answers"], directory)
        for row in part:
            title = str(row.get("title") or "untitled")
            article = articles.setdefault(title, {"title": title, "paragraphs": {}})
            para = article["paragraphs"].setdefault(row["context"], {"context": row["context"], "qas": []})
            texts = row["answers"]["text"] if isinstance(row["answers"], dict) else row["answers"]
            para["qas"].append({"id": row.get("id"), "question": row["question"],
                                "answers": [{"text": t} for t in texts], "split": split_name})
    payload = {"data": [{"title": a["title"], "paragraphs": list(a["paragraphs"].values())} for a in articles.values()]}
    docs, qa = squad_to_tables(payload, directory, cfg)
    given = [q.get("split") for a in payload["data"] for p in a["paragraphs"] for q in p["qas"]]
    if all(s in SPLITS for s in given):
        qa["split"] = given
    return docs, qa


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
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataLoadError(f"{path}: cannot read SQuAD JSON ({err})") from None
        docs, qa = squad_to_tables(payload, path, cfg)
        doc_path = qa_path = path
    elif fmt == "hf":
        docs, qa = _load_hf(path, cfg)
        doc_path = qa_path = path
    else:
        doc_path, qa_path = _find_table(path, "documents", fmt), _find_table(path, "qa", fmt)
        docs, qa = _read_table(doc_path), _read_table(qa_path)
    if cfg.feedback_path is not None and Path(cfg.feedback_path).is_file():
        # Corrected answers from the gateway's feedback (tasks.feedback_data): training rows only, never test.
        feedback = _read_table(Path(cfg.feedback_path)).assign(split="train")
        qa = pd.concat([qa, feedback], ignore_index=True)
    docs, qa = normalise_tables(docs, qa, doc_path, qa_path)
    return Dataset(documents=docs, qa=qa, fingerprint=fingerprint_tables(docs, qa), source=str(path))
