"""Metric definitions. Names here are the stable column names users compare in MLflow.

- exact_match / f1: the official SQuAD v1.1 evaluation (normalise: lowercase, drop punctuation,
  drop the articles a/an/the, collapse whitespace; max over the accepted answers).
- groundedness: share of an answer's normalised tokens found in its supporting text (the
  retrieved passages plus the gold document). hallucination_rate: share of non-empty answers
  whose groundedness is below `support_threshold`.
- recall_at_k: 1 if the gold document is among the top-k retrieved chunks' documents;
  precision_at_k: share of the top-k chunks that come from the gold document; mrr: 1/rank of the
  first gold chunk (0 if absent).
- ragas (computed by ragas itself, no LLM): string_similarity (Levenshtein), rouge (ROUGE-L F),
  bleu, context_precision / context_recall (non-LLM, against the gold document), and
  semantic_similarity (cosine of the local embedding model).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_PUNCT = set(string.punctuation)
RAGAS_COLUMNS = {
    "non_llm_string_similarity": "string_similarity",
    "rouge_score(mode=fmeasure)": "rouge",
    "bleu_score": "bleu",
    "non_llm_context_precision_with_reference": "context_precision",
    "non_llm_context_recall": "context_recall",
    "semantic_similarity": "semantic_similarity",
}


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation, as in the official evaluate-v1.1.py."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    return max(_f1_single(prediction, g) for g in golds)


def answer_support(answer: str, supporting_texts: Sequence[str]) -> float | None:
    """Share of the answer's normalised tokens present in the supporting texts; None for an empty answer."""
    tokens = normalize_answer(answer).split()
    if not tokens:
        return None
    vocabulary = set(normalize_answer(" ".join(supporting_texts)).split())
    return sum(t in vocabulary for t in tokens) / len(tokens)


def retrieval_scores(retrieved_doc_ids: Sequence[str], gold_doc_id: str, k: int) -> dict[str, float]:
    top = list(retrieved_doc_ids)[:k]
    ranks = [i for i, d in enumerate(top, start=1) if d == gold_doc_id]
    return {
        "recall_at_k": float(bool(ranks)),
        "precision_at_k": len(ranks) / k if k else 0.0,
        "mrr": 1.0 / ranks[0] if ranks else 0.0,
    }


def bootstrap_ci(values: Sequence[float], samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    arr = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(samples, arr.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def ragas_scores(rows: list[dict], embedding_dir: Path) -> dict[str, list[float]]:
    """Per-question ragas non-LLM metrics. rows: user_input, response, reference,
    retrieved_contexts, reference_contexts. No LLM is passed or built."""
    from ragas import EvaluationDataset, evaluate
    from ragas.embeddings import HuggingFaceEmbeddings
    from ragas.metrics import (
        BleuScore,
        NonLLMContextPrecisionWithReference,
        NonLLMContextRecall,
        NonLLMStringSimilarity,
        RougeScore,
        SemanticSimilarity,
    )

    embeddings = HuggingFaceEmbeddings(model=str(embedding_dir))
    metrics = [NonLLMStringSimilarity(), RougeScore(), BleuScore(), SemanticSimilarity(embeddings=embeddings)]
    if all(r["retrieved_contexts"] for r in rows):
        metrics += [NonLLMContextPrecisionWithReference(), NonLLMContextRecall()]
    result = evaluate(EvaluationDataset.from_list(rows), metrics=metrics, embeddings=embeddings,
                      show_progress=False, raise_exceptions=True)
    table = result.to_pandas()
    return {name: table[col].astype(float).tolist() for col, name in RAGAS_COLUMNS.items() if col in table}
