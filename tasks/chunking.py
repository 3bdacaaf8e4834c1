"""Chunking strategies; lengths are counted in tokens of the embedding model's tokenizer.

Each chunk keeps its document id, its position (`chunk_id` = "<doc_id>#<n>") and its character
span in the document text, so any retrieved passage traces back to its source. The chunk's
content hash keys the embedding store of incremental rebuilds.
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd

from tasks.index_settings import ChunkingConfig

CHUNK_COLUMNS = ["chunk_id", "doc_id", "title", "text", "start", "end", "content_hash"]
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _word_starts(word_ids: list[int | None]) -> list[bool]:
    return [i == 0 or w is None or w != word_ids[i - 1] for i, w in enumerate(word_ids)]


def token_windows(text: str, tokenizer, max_tokens: int, overlap: int, offset: int = 0) -> list[tuple[int, int]]:
    """Character spans of windows of at most `max_tokens` tokens, sharing >= `overlap` tokens.

    Windows start and end on word boundaries (a word longer than a window is the only exception),
    so no chunk begins or ends inside a word.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets, n = enc["offset_mapping"], len(enc["input_ids"])
    if n == 0:
        return []
    starts = _word_starts(enc.word_ids())
    spans, s = [], 0
    while True:
        e = min(s + max_tokens, n)
        while e < n and not starts[e] and e > s + 1:
            e -= 1
        if e < n and not starts[e]:  # one word longer than the window: cut inside it
            e = min(s + max_tokens, n)
        spans.append((offset + offsets[s][0], offset + offsets[e - 1][1]))
        if e >= n:
            return spans
        nxt = max(e - overlap, s + 1)
        while nxt > s + 1 and not starts[nxt]:
            nxt -= 1
        s = nxt


def paragraph_spans(text: str, tokenizer, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Blank-line paragraphs; consecutive short ones merged up to `max_tokens`, long ones windowed."""
    paragraphs, pos = [], 0
    for part in _PARAGRAPH_BREAK.split(text):
        start = text.index(part, pos)
        pos = start + len(part)
        stripped = part.strip()
        if stripped:
            lead = part.index(stripped)
            paragraphs.append((start + lead, start + lead + len(stripped)))
    spans: list[tuple[int, int]] = []
    current, current_tokens = None, 0
    for start, end in paragraphs:
        tokens = len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        if tokens > max_tokens:
            if current:
                spans.append(current)
            current, current_tokens = None, 0
            spans.extend(token_windows(text[start:end], tokenizer, max_tokens, overlap, offset=start))
        elif current and current_tokens + tokens <= max_tokens:
            current, current_tokens = (current[0], end), current_tokens + tokens
        else:
            if current:
                spans.append(current)
            current, current_tokens = (start, end), tokens
    if current:
        spans.append(current)
    return spans


def chunk_documents(documents: pd.DataFrame, cfg: ChunkingConfig, tokenizer) -> pd.DataFrame:
    """One row per chunk: ids, title, text, character span in the document, content hash."""
    rows = []
    for doc_id, title, text in zip(documents["doc_id"], documents["title"], documents["text"], strict=True):
        if cfg.strategy == "paragraph":
            spans = paragraph_spans(text, tokenizer, cfg.max_tokens, cfg.overlap_tokens)
        else:
            spans = token_windows(text, tokenizer, cfg.max_tokens, cfg.overlap_tokens)
        for i, (start, end) in enumerate(spans):
            chunk = " ".join(text[start:end].split())
            rows.append({"chunk_id": f"{doc_id}#{i}", "doc_id": doc_id, "title": title, "text": chunk,
                         "start": start, "end": end, "content_hash": content_hash(chunk)})
    return pd.DataFrame(rows, columns=CHUNK_COLUMNS)
