"""Metric definitions. Names here are the stable column names users compare in MLflow.

- exact_match / f1: the official SQuAD v1.1 evaluation (normalise: lowercase, drop punctuation,
  drop the articles a/an/the, collapse whitespace; max over the accepted answers). For free_form
  answers f1 is the token F1 against the reference.
- label answers: accuracy (the predicted label equals the gold one, normalised), macro_f1 (the
  mean over the labels present in gold or prediction of each label's F1; its interval resamples
  questions), and the confusion matrix (gold rows, predicted columns).
- groundedness: share of an answer's normalised tokens found in its supporting text (the
  retrieved passages plus the gold document). hallucination_rate: share of non-empty answers
  whose groundedness is below `support_threshold`.
- recall_at_k: 1 if the gold document is among the top-k retrieved chunks' documents;
  precision_at_k: share of the top-k chunks that come from the gold document; mrr: 1/rank of the
  first gold chunk (0 if absent); ndcg_at_k: binary-relevance nDCG with the gold document as the
  one relevant item, i.e. 1/log2(1 + rank of its first chunk) (0 if absent).
- ragas (computed by ragas itself, no LLM): string_similarity (Levenshtein), rouge (ROUGE-L F),
  bleu, context_precision / context_recall (non-LLM, against the gold document), and
  semantic_similarity (cosine of the local embedding model).
- ragas with an LLM judge (only with `evaluation.judge`, an OpenAI-compatible endpoint):
  faithfulness (share of the answer's claims supported by the retrieved passages; retrieving
  candidates only) and answer_correctness (claim-level F1 against the reference, blended with
  semantic similarity as ragas does). Without a judge both are absent, never estimated.
- latency_p50_ms / latency_p95_ms / ttft_p50_ms / ttft_p95_ms: from the controlled measurement
  of tasks.latency (warm, one question at a time, other processes' CPU use recorded); these are
  what the champion policy reads. The batched pass below gives batch_latency_p50_ms / _p95_ms.
- latency_ms (per question in the batched pass, reported as batch_latency_p50_ms / _p95_ms): wall
  time from the moment its batch starts (retrieval included) until that question's own answer is finished —
  its sequence emitted EOS, completed a stop string, or reached max_new_tokens (for an endpoint:
  its response arrived). Under batched generation a short answer is not charged for the longest
  one in its batch, but it does wait for its batch's retrieval and prompt processing, as a caller
  would. retrieval_ms: the wall time of its batch's (batched) retrieval. ttft_ms: batch start
  until its first generated token (greedy batches emit every row's first token in the same step;
  not measured for non-streaming endpoints).
- compute_seconds (per question): the batch's wall time divided by its number of questions, i.e.
  the machine time a question costs when answered in batches.
- cost_per_1k_queries = 1000 × (mean compute_seconds × evaluation.price_per_hour / 3600
  + mean endpoint cost), where a question's endpoint cost is prompt tokens / 1000 ×
  price_per_1k_input_tokens + completion tokens / 1000 × price_per_1k_output_tokens (0 without
  an endpoint; the judge's tokens are evaluation cost, not serving cost, and are not included).
- paired bootstrap (champion selection): challenger-minus-champion differences per question on
  the same questions, question indices resampled jointly; see `paired_bootstrap`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tasks.text import normalize_answer

if TYPE_CHECKING:
    from tasks.settings import EndpointConfig

RAGAS_COLUMNS = {
    "non_llm_string_similarity": "string_similarity",
    "rouge_score(mode=fmeasure)": "rouge",
    "bleu_score": "bleu",
    "non_llm_context_precision_with_reference": "context_precision",
    "non_llm_context_recall": "context_recall",
    "semantic_similarity": "semantic_similarity",
}
JUDGE_METRICS = ("faithfulness", "answer_correctness")


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


def macro_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Mean per-label F1 over the labels that occur in the gold answers or the predictions (normalised)."""
    pred = [normalize_answer(p) for p in predictions]
    gold = [normalize_answer(g) for g in golds]
    scores = []
    for label in sorted(set(pred) | set(gold)):
        tp = sum(p == g == label for p, g in zip(pred, gold, strict=True))
        fp, fn = pred.count(label) - tp, gold.count(label) - tp
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def confusion_matrix(predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Counts with gold labels as rows and predicted labels as columns (an unknown prediction is `other`)."""
    by_norm = {normalize_answer(label): label for label in labels}
    columns = [*labels, "other"]
    table = pd.DataFrame(0, index=pd.Index(list(labels), name="gold"), columns=columns)
    for p, g in zip(predictions, golds, strict=True):
        gold = by_norm.get(normalize_answer(g))
        if gold is not None:
            table.at[gold, by_norm.get(normalize_answer(p), "other")] += 1
    return table if table["other"].any() else table.drop(columns="other")


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float], samples: int, seed: int,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of n questions (resampled as index arrays)."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, size=n)) for _ in range(samples)]
    tail = (1 - level) / 2 * 100
    return float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))


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
        "ndcg_at_k": 1.0 / math.log2(1 + ranks[0]) if ranks else 0.0,
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


@dataclass(frozen=True)
class PairedBootstrap:
    """Challenger minus champion, per question, on the same questions."""

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence_level: float
    p_value: float  # one-sided: H0 "the challenger is not better" (mean difference <= 0)
    significance_level: float
    significant: bool


def paired_bootstrap(challenger: Sequence[float], champion: Sequence[float], samples: int, seed: int,
                     significance_level: float, confidence_level: float = 0.95) -> PairedBootstrap:
    """Paired bootstrap of the mean per-question difference (challenger − champion).

    Both sequences score the same questions in the same order; questions where either score is
    missing are dropped. Question indices are resampled jointly, so per-question difficulty cancels
    out. The interval is the percentile interval of the resampled mean differences; the one-sided
    p-value is the share of resamples whose mean difference is <= 0, with an add-one correction
    ((1 + count) / (1 + samples), never 0); `significant` means p < significance_level.
    """
    a, b = np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same questions: {a.size} challenger vs {b.size} champion scores")
    diff = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if diff.size == 0:
        nan = float("nan")
        return PairedBootstrap(0, nan, nan, nan, confidence_level, 1.0, significance_level, False)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    tail = (1 - confidence_level) / 2 * 100
    p_value = (1 + int(np.count_nonzero(means <= 0))) / (samples + 1)
    return PairedBootstrap(int(diff.size), float(diff.mean()), float(np.percentile(means, tail)),
                           float(np.percentile(means, 100 - tail)), confidence_level, p_value, significance_level,
                           p_value < significance_level)


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


def ragas_judge_scores(rows: list[dict], judge: EndpointConfig, embedding_dir: Path) -> dict[str, list[float]]:
    """Per-question ragas faithfulness (retrieving candidates only) and answer_correctness, judged by `judge`.

    A question the judge could not score (unparseable output) is NaN and left out of the mean;
    a judge that scores nothing at all raises, naming its URL.
    """
    from ragas import EvaluationDataset, evaluate
    from ragas.embeddings import HuggingFaceEmbeddings
    from ragas.llms import llm_factory
    from ragas.metrics import AnswerCorrectness, Faithfulness

    from tasks.endpoint import EndpointError, async_openai_client

    llm = llm_factory(judge.model, client=async_openai_client(judge), temperature=0.0)
    embeddings = HuggingFaceEmbeddings(model=str(embedding_dir))
    metrics = [AnswerCorrectness(llm=llm, embeddings=embeddings)]
    if all(r["retrieved_contexts"] for r in rows):
        metrics.append(Faithfulness(llm=llm))
    result = evaluate(EvaluationDataset.from_list(rows), metrics=metrics, llm=llm, embeddings=embeddings,
                      show_progress=False, raise_exceptions=False)
    table = result.to_pandas()
    scores = {m.name: table[m.name].astype(float).tolist() for m in metrics}
    if all(np.isnan(v) for values in scores.values() for v in values):
        raise EndpointError(f"judge {judge.base_url} (model {judge.model}) returned no usable verdicts; "
                            "see the ragas log for each request's error")
    return scores
