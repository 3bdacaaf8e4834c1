"""Corrected answers from gateway feedback become QA rows for the next retraining.

A request whose feedback carries a `correct_answer` and whose answer came with retrieved passages
becomes a row: its question, the corrected answer, the first retrieved document as the gold
document, split `train` (the loader forces that: feedback never reaches the test split, where it
would leak into the scores). The rows go to `data.feedback_path` (JSONL, merged by qa_id, written
whole or not at all); the loader adds them and validation checks them like every other row, so a
corrected answer that is not in its document stops the run or is quarantined, as configured.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

PREFIX = "feedback-"


def feedback_rows(requests: pd.DataFrame) -> pd.DataFrame:
    """QA rows for the answered (not shadow) requests with a corrected answer and a retrieved document."""
    if requests.empty or "correct_answer" not in requests:
        return pd.DataFrame(columns=["qa_id", "question", "answer", "doc_id", "split"])
    usable = requests[requests["correct_answer"].notna() & ~requests["shadow"].astype(bool)
                      & requests["sources"].map(lambda s: bool(s))]
    return pd.DataFrame({"qa_id": PREFIX + usable["request_id"].astype(str), "question": usable["question"],
                         "answer": usable["correct_answer"].map(lambda a: [a]),
                         "doc_id": usable["sources"].map(lambda s: s[0]), "split": "train"})


def export_feedback(requests: pd.DataFrame, path: Path) -> int:
    """Merge the feedback rows into `path`; returns how many rows were new."""
    path = Path(path)
    existing = pd.read_json(path, lines=True) if path.is_file() and path.stat().st_size else pd.DataFrame()
    rows = feedback_rows(requests)
    new = rows[~rows["qa_id"].isin(existing["qa_id"])] if not existing.empty else rows
    merged = pd.concat([existing, new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in merged.to_dict(orient="records"))
    os.replace(staging, path)
    return len(new)
