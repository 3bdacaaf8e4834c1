"""SQuAD-format input (a JSON file, or Hugging Face rows shaped like SQuAD) checked field by field and
turned into the contract's two tables: each paragraph a document, each answerable question a QA pair.

Every malformed value is a DataLoadError naming the file and the JSON path of the value
(`data[3].paragraphs[0].qas[2].answers[0]: missing 'text'`) or the Hugging Face row. SQuAD v2's
unanswerable questions (`is_impossible: true`, or an empty `answers` list next to an
`is_impossible` flag) carry no answer to train or score on: they are skipped and counted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.load_values import DataLoadError, normalise_answers, parse_json, read_utf8, type_name
from tasks.schema import SPLITS
from tasks.settings import DataConfig
from tasks.text import normalize_answer

V2_REASON = "SQuAD v2 is_impossible"


@dataclass(frozen=True)
class SquadTables:
    documents: pd.DataFrame
    qa: pd.DataFrame
    notes: tuple[str, ...] = ()  # what was left out and why


def unit_hash(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def assign_split(key: str, fractions: dict[str, float]) -> str:
    """Deterministic split from a stable hash of `key`."""
    u, edge = unit_hash(key), 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1]


def read_squad(path: Path) -> Any:
    """The parsed JSON of a SQuAD file (BOM allowed); unreadable, non-UTF-8 or unparsable is a DataLoadError."""
    return parse_json(read_utf8(path), str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "doc"


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataLoadError(f"{where}: must be an object, got {type_name(value)}")
    return value


def _list(obj: dict, key: str, where: str, required: bool = True) -> list:
    if key not in obj:
        if required:
            raise DataLoadError(f"{where}: missing '{key}'")
        return []
    if not isinstance(obj[key], list):
        raise DataLoadError(f"{where}.{key}: must be a list, got {type_name(obj[key])}")
    return obj[key]


def _string(obj: dict, key: str, where: str, required: bool = True, non_empty: bool = False) -> str | None:
    """obj[key] as a string; an absent optional field (missing or null) is None."""
    value = obj.get(key)
    if value is None and not required:
        return None
    if key not in obj:
        raise DataLoadError(f"{where}: missing '{key}'")
    rule = "a non-empty string" if non_empty else "a string"
    if not isinstance(value, str):
        raise DataLoadError(f"{where}.{key}: must be {rule}, got {type_name(value)}")
    if non_empty and not value.strip():
        raise DataLoadError(f"{where}.{key}: must be {rule}, got a blank string")
    return value


def _qa_id(obj: dict, where: str) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataLoadError(f"{where}.id: must be a non-empty string or an integer, got "
                            f"{'a blank string' if isinstance(value, str) else type_name(value)}")
    return value


def _impossible_flag(obj: dict, where: str) -> bool | None:
    value = obj.get("is_impossible")
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise DataLoadError(f"{where}.is_impossible: must be true or false, got {type_name(value)}")
    return None if value is None else bool(value)


def _unanswerable(qa: dict, where: str) -> bool:
    """SQuAD v2: flagged is_impossible, or an empty answers list next to the flag."""
    flag = _impossible_flag(qa, where)
    return bool(flag) or (flag is not None and qa.get("answers") == [])


def _answers(qa: dict, where: str) -> list[dict]:
    """The answer objects of a question: a non-empty list of objects, each with a 'text'."""
    answers = _list(qa, "answers", where)
    if not answers:
        raise DataLoadError(f"{where}.answers: empty list; give an answer, or mark an unanswerable question "
                            f"'is_impossible': true (SQuAD v2)")
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise DataLoadError(f"{where}.answers[{i}]: must be an object with a 'text', got {type_name(answer)}")
    return answers


def _question_groups(qas: list[dict[str, Any]]) -> list[str]:
    """The split key of each question when splitting by question: questions that are one question for
    leakage purposes share it, so they land in the same split. That is the same normalised question (asked
    again elsewhere), or the same gold paragraph with a shared normalised answer (a rewording: "How many
    people did it employ?" / "How many staff did it employ?"). A question alone keeps its normalised text."""
    parent = list(range(len(qas)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, qa in enumerate(qas):
        links = [("question", normalize_answer(qa["question"]))]
        links += [("answer", qa["doc_id"], normalize_answer(a)) for a in qa["answer"]]
        for link in links:
            parent[root(i)] = root(first.setdefault(link, i))
    members: dict[int, list[str]] = {}
    for i, qa in enumerate(qas):
        members.setdefault(root(i), []).append(normalize_answer(qa["question"]))
    return [min(members[root(i)]) for i in range(len(qas))]


def squad_to_tables(payload: Any, path: Path | str, cfg: DataConfig) -> SquadTables:
    """SQuAD v1.1/v2.0 JSON: each paragraph a document, each answerable question a QA pair, split by stable hash."""
    if not isinstance(payload, dict):
        raise DataLoadError(f"{path}: not SQuAD format: the top level must be an object with a 'data' list, "
                            f"got {type_name(payload)}")
    if "data" not in payload:
        raise DataLoadError(f"{path}: not SQuAD format: missing the top-level 'data' list")
    if not isinstance(payload["data"], list):
        raise DataLoadError(f"{path}: data: must be a list, got {type_name(payload['data'])}")
    docs, qas, skipped = [], [], 0
    for a_idx, article in enumerate(payload["data"]):
        a_where = f"data[{a_idx}]"
        try:
            _object(article, a_where)
            title = _string(article, "title", a_where, required=False)
            title = f"article-{a_idx}" if title is None else title
            for p_idx, para in enumerate(_list(article, "paragraphs", a_where)):
                p_where = f"{a_where}.paragraphs[{p_idx}]"
                _object(para, p_where)
                doc_id = f"{_slug(title)}-p{p_idx:03d}"
                docs.append({"doc_id": doc_id, "title": title, "text": _string(para, "context", p_where),
                             "source": Path(path).name})  # the name, not the path: the same file is the same data
                for q_idx, qa in enumerate(_list(para, "qas", p_where, required=False)):
                    q_where = f"{p_where}.qas[{q_idx}]"
                    _object(qa, q_where)
                    question = _string(qa, "question", q_where, non_empty=True)
                    qa_id = _qa_id(qa, q_where) or f"{doc_id}-q{q_idx}"
                    if _unanswerable(qa, q_where):
                        skipped += 1
                        continue
                    answers = normalise_answers(_answers(qa, q_where), f"{q_where}.answers")
                    qas.append({"qa_id": qa_id, "question": question, "answer": answers, "doc_id": doc_id})
        except DataLoadError as err:
            raise DataLoadError(f"{path}: {err}") from None
    keys = _question_groups(qas) if cfg.split_by == "question" else [q["doc_id"] for q in qas]
    for qa, key in zip(qas, keys, strict=True):
        qa["split"] = assign_split(f"split:{key}", cfg.split_fractions)
    if not qas:
        what = f"all {skipped} questions are unanswerable ({V2_REASON})" if skipped else "no questions found"
        raise DataLoadError(f"{path}: {what}; nothing to train or score on")
    notes = (f"skipped {skipped} unanswerable question{'s' if skipped != 1 else ''} ({V2_REASON})",) if skipped else ()
    return SquadTables(pd.DataFrame(docs), pd.DataFrame(qas), notes)


def _hf_row(row: dict, where: str) -> dict[str, Any]:
    """One SQuAD-shaped Hugging Face row checked, its answers normalised (empty when unanswerable: flagged
    is_impossible, or no answer text at all, which is how Hugging Face's squad_v2 marks one)."""
    flag = _impossible_flag(row, where)
    raw = row["answers"]
    texts = raw.get("text") if isinstance(raw, dict) else raw
    empty = isinstance(texts, (list, np.ndarray)) and len(texts) == 0
    impossible = bool(flag) or empty
    return {"title": _string(row, "title", where, required=False) or "untitled",
            "context": _string(row, "context", where), "id": _qa_id(row, where),
            "question": _string(row, "question", where, non_empty=True), "is_impossible": impossible,
            "answers": [] if impossible else [{"text": t} for t in normalise_answers(raw, f"{where}.answers")]}


def hf_rows_to_tables(parts: Iterable[tuple[str | None, Iterable[dict]]], directory: Path,
                      cfg: DataConfig) -> SquadTables:
    """SQuAD-shaped rows (context, question, answers; title, id optional) of each split (None: unsplit), grouped
    into articles by title and paragraphs by context; the splits are kept when all are contract split names."""
    articles: dict[str, dict[str, dict[str, Any]]] = {}
    for split_name, rows in parts:
        for i, row in enumerate(rows):
            where = f"{directory}: {f'split {split_name!r} ' if split_name else ''}row {i}"
            checked = _hf_row(row, where if row.get("id") is None else f"{where} (id={row['id']})")
            para = articles.setdefault(checked.pop("title"), {}).setdefault(
                checked["context"], {"context": checked.pop("context"), "qas": []})
            para["qas"].append({**checked, "split": split_name})
    payload = {"data": [{"title": title, "paragraphs": list(paras.values())} for title, paras in articles.items()]}
    tables = squad_to_tables(payload, directory, cfg)
    kept = [q["split"] for a in payload["data"] for p in a["paragraphs"] for q in p["qas"] if not q["is_impossible"]]
    if all(s in SPLITS for s in kept):
        tables.qa["split"] = kept
    return tables
