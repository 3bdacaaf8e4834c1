"""Text normalisation shared by loading, validation, training and the metrics."""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation, as in the official evaluate-v1.1.py: lowercase, drop punctuation,
    drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())
