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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible_controls(s: str) -> str:
    """`s` with control characters (terminal escape sequences among them) written as `\\xNN`, so text from the
    data can never move the cursor, clear the screen or retitle the terminal it is printed on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
