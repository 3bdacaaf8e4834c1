"""The helper columns that validation's expectations check: lengths, answer counts, whether an answer
occurs in its gold document, and each test question's closest train question (leakage): over all
train questions, and over those with the same gold document and a shared answer.

Cross-table rules are computed here as columns on copies of the tables, so that every rule is an
ordinary Great Expectations expectation with counts and record ids in its result.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

import numpy as np
import pandas as pd

from tasks.text import normalize_answer

ROW = "row"  # helper column: 0-based position of the record in its input table
_FUZZ_BLOCK = 4_000_000  # similarity-matrix cells computed at once (float64: 32 MB)
_PARALLEL_CELLS = 100_000  # smaller matrices are scored on one thread: starting the pool costs more


def text_length(value: Any) -> float:
    """Length of a string; NaN for missing or non-string values (reported by the null/type rules)."""
    return float(len(value)) if isinstance(value, str) else math.nan


def answer_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [a for a in value if isinstance(a, str)]
    return []


def documents_with_columns(documents: pd.DataFrame) -> pd.DataFrame:
    docs = documents.reset_index(drop=True)
    docs[ROW] = range(len(docs))
    if "text" in docs:
        docs["text_chars"] = docs["text"].map(text_length).astype(float)
    return docs


def _near_duplicates(test_q: list[str], train_q: list[str], any_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each test question: best similarity against the train questions, and its index. The similarity is
    fuzz.ratio/100; with `any_order` the higher of fuzz.ratio and fuzz.token_sort_ratio (reordered clauses)."""
    from rapidfuzz import fuzz, process

    scorers = (fuzz.ratio, fuzz.token_sort_ratio) if any_order else (fuzz.ratio,)
    best = np.zeros(len(test_q))
    where = np.zeros(len(test_q), dtype=int)
    block = max(1, _FUZZ_BLOCK // max(1, len(train_q)))
    for start in range(0, len(test_q), block):
        chunk = test_q[start:start + block]
        workers = -1 if len(chunk) * len(train_q) >= _PARALLEL_CELLS else 1
        scores = reduce(np.maximum, (process.cdist(chunk, train_q, scorer=scorer, dtype=np.float64, workers=workers)
                                     for scorer in scorers))
        where[start:start + block] = scores.argmax(axis=1)
        best[start:start + block] = scores.max(axis=1) / 100
    return best, where


def qa_with_columns(documents: pd.DataFrame, qa: pd.DataFrame, labels: list[str] | None = None) -> pd.DataFrame:
    """QA copy with helper columns for the length and cross-table rules (and, given the label set of
    label data, which label each row's answer is)."""
    frame = qa.reset_index(drop=True)
    frame[ROW] = range(len(frame))
    if "question" in frame:
        frame["question_chars"] = frame["question"].map(text_length).astype(float)
    if "answer" in frame:
        answers = frame["answer"].map(answer_list)
        frame["answer_count"] = answers.map(len)
        frame["answer_chars_min"] = answers.map(lambda a: min(map(len, a)) if a else math.nan).astype(float)
        frame["answer_chars_max"] = answers.map(lambda a: max(map(len, a)) if a else math.nan).astype(float)
        if "doc_id" in frame and {"doc_id", "text"} <= set(documents.columns):
            norm_docs = {d: normalize_answer(t) for d, t in zip(documents["doc_id"], documents["text"], strict=True)
                         if isinstance(t, str)}

            def occurs(ans: list[str], doc_id: Any) -> bool | None:
                if not ans or doc_id not in norm_docs:
                    return None  # reported by the answer-count / doc_id rules
                return any((n := normalize_answer(a)) and n in norm_docs[doc_id] for a in ans)

            frame["answer_in_gold_doc"] = pd.Series(
                [occurs(a, d) for a, d in zip(answers, frame["doc_id"], strict=True)], dtype=object)
        if labels:
            by_norm = {normalize_answer(label): label for label in labels}
            frame["answer_label"] = pd.Series([by_norm.get(normalize_answer(a[0])) if a else None for a in answers],
                                              dtype=object)
            frame["answer_in_label_set"] = frame["answer_label"].notna()
    if {"question", "split"} <= set(frame.columns):
        _add_leakage_columns(frame)
    return frame


def _add_leakage_columns(frame: pd.DataFrame) -> None:
    norm = frame["question"].map(lambda q: normalize_answer(q) if isinstance(q, str) else "")
    ids = frame["qa_id"] if "qa_id" in frame else frame[ROW]
    train = (frame["split"] == "train") & (norm != "")
    test = (frame["split"] == "test") & (norm != "")
    train_first: dict[str, Any] = {}
    for q, i in zip(norm[train], ids[train], strict=True):
        train_first.setdefault(q, i)
    exact = test & norm.isin(train_first)
    frame["test_question_normalised"] = pd.Series(np.where(test, norm, None), dtype=object)
    frame["train_duplicate_of"] = pd.Series([train_first.get(q) if e else None for q, e in zip(norm, exact,
                                                                                               strict=True)],
                                            dtype=object)
    similarity = np.full(len(frame), np.nan)
    closest_id = np.full(len(frame), None, dtype=object)
    closest_q = np.full(len(frame), None, dtype=object)
    near = test & ~exact
    train_q, train_ids = norm[train].tolist(), ids[train].tolist()
    train_raw = frame.loc[train, "question"].tolist()
    if near.any() and train_q:
        best, where = _near_duplicates(norm[near].tolist(), train_q)
        positions = np.flatnonzero(near.to_numpy())
        similarity[positions] = best
        closest_id[positions] = [train_ids[w] for w in where]
        closest_q[positions] = [train_raw[w] for w in where]
    frame["train_similarity"] = similarity
    frame["closest_train_qa_id"] = closest_id
    frame["closest_train_question"] = closest_q
    if {"answer", "doc_id"} <= set(frame.columns):
        _add_same_answer_columns(frame, norm.tolist(), ids.tolist(), train.to_numpy(), near.to_numpy())


def _add_same_answer_columns(frame: pd.DataFrame, norm: list[str], ids: list[Any], train: np.ndarray,
                             test: np.ndarray) -> None:
    """Each test row's closest train question among those with the same doc_id and a shared normalised answer.

    Rows are grouped by (doc_id, normalised answer) and compared only within a group, so the cost follows
    the group sizes rather than test x train.
    """
    doc_ids = frame["doc_id"].tolist()
    raw = frame["answer"].map(answer_list).tolist()
    answers = [{normalize_answer(a) for a in ans} - {""} for ans in raw]
    groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for pos in np.flatnonzero(train):
        if isinstance(doc_ids[pos], str):
            for answer in answers[pos]:
                groups.setdefault((doc_ids[pos], answer), ([], []))[1].append(pos)
    for pos in np.flatnonzero(test):
        for answer in answers[pos]:
            if isinstance(doc_ids[pos], str) and (group := groups.get((doc_ids[pos], answer))):
                group[0].append(pos)
    similarity = np.full(len(frame), np.nan)
    match = np.full(len(frame), -1)
    shared = np.full(len(frame), None, dtype=object)
    for (_, answer), (tests, trains) in groups.items():
        if not tests:
            continue
        best, where = _near_duplicates([norm[t] for t in tests], [norm[t] for t in trains], any_order=True)
        for pos, score, w in zip(tests, best, where, strict=True):
            if not score <= similarity[pos]:  # also when similarity[pos] is still NaN
                similarity[pos], match[pos] = score, trains[w]
                shared[pos] = next(a for a in raw[pos] if normalize_answer(a) == answer)
    found = match >= 0
    frame["same_answer_similarity"] = similarity
    frame["same_answer_train_qa_id"] = pd.Series([ids[m] if f else None for m, f in zip(match, found, strict=True)],
                                                 dtype=object)
    frame["same_answer_train_question"] = pd.Series(
        [frame["question"].iat[m] if f else None for m, f in zip(match, found, strict=True)], dtype=object)
    frame["same_answer_shared"] = shared
