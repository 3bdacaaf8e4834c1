"""Answer types (DESIGN.md "Answer types"): what an answer is, and everything that follows from it.

- span: a short text copied from the gold document. Validation checks that it occurs there; the
  candidates generate the shortest exact answer (first line kept); EM / F1 are the headline.
- free_form: a reference text that need not occur verbatim. Length bounds only; the candidates
  answer in a few sentences, up to `max_new_tokens` sized from the training answers (no
  first-line cut); ROUGE-L, token F1 and semantic similarity are the headline.
- label: one of a closed set (yes/no/maybe, a few categories). Validation checks membership; a
  candidate answers with the label its model finds most likely (no free generation); accuracy and
  macro-F1 (with a confusion matrix) are the headline.

`data.answer_type: auto` infers the type from the data (`profile` + `infer`) and says why.
`resolve` fills every setting that follows from the type and that the config leaves unset
(prompts, max_new_tokens, answer length bounds, champion objective), so the resolved config that
is logged and bundled with the registered model is exactly what ran.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from tasks.records import RunRecord
from tasks.settings import AnswerInferenceConfig, PipelineConfig
from tasks.text import normalize_answer

AnswerType = Literal["span", "free_form", "label"]


@dataclass(frozen=True)
class TypeDefaults:
    system_prompt: str  # {labels} is replaced by the label set
    context_instruction: str
    answer_chars: tuple[int, int]
    objective: dict[str, float]
    headline: tuple[str, str]  # the two metrics shown with intervals in the comparison table


DEFAULTS: dict[str, TypeDefaults] = {
    "span": TypeDefaults("Reply with the shortest exact answer: a name, number, date or short phrase.",
                         "Use the passages below. Copy the answer span from them.", (1, 300), {"f1": 1.0},
                         ("exact_match", "f1")),
    "free_form": TypeDefaults("Answer the question in one to three sentences.",
                              "Use the passages below to answer.", (1, 3000),
                              {"rouge": 0.5, "semantic_similarity": 0.5}, ("rouge", "f1")),
    "label": TypeDefaults("Answer with exactly one of: {labels}.", "Use the passages below to decide.", (1, 100),
                          {"macro_f1": 1.0}, ("accuracy", "macro_f1")),
}
LABEL_MAX_NEW_TOKENS = 8  # an endpoint generating a label (a local model scores the labels instead)


@dataclass(frozen=True)
class AnswerProfile:
    """What the answers look like, measured on the QA table (first accepted answer per row)."""

    rows: int
    distinct: int  # distinct normalised answers
    verbatim_share: float  # rows with an accepted answer found (normalised) in the gold document
    median_words: float
    max_distinct_words: int  # words of the longest distinct answer
    chars: dict[str, float]  # min / median / p95 / max answer characters
    top_answers: list[tuple[str, int]] = field(default_factory=list)


def profile(qa: pd.DataFrame, documents: pd.DataFrame) -> AnswerProfile:
    """Measure the answers; linear in the corpus (each document is normalised once)."""
    docs = {d: normalize_answer(t) for d, t in zip(documents["doc_id"], documents["text"], strict=True)
            if isinstance(t, str)}
    first = [a[0] if len(a) else "" for a in qa["answer"]]
    found = [any((n := normalize_answer(x)) and n in docs.get(d, "") for x in answers)
             for answers, d in zip(qa["answer"], qa["doc_id"], strict=True)]
    counts = Counter(normalize_answer(a) for a in first)
    lengths = np.array([len(a) for a in first] or [0])
    return AnswerProfile(
        rows=len(qa), distinct=len(counts), verbatim_share=float(np.mean(found)) if found else 0.0,
        median_words=float(np.median([len(a.split()) for a in first])) if first else 0.0,
        max_distinct_words=max((len(a.split()) for a in counts), default=0),
        chars={"min": float(lengths.min()), "median": float(np.median(lengths)),
               "p95": float(np.percentile(lengths, 95)), "max": float(lengths.max())},
        top_answers=[(a, n) for a, n in counts.most_common(5)])


def infer(prof: AnswerProfile, cfg: AnswerInferenceConfig) -> tuple[AnswerType, str]:
    """The answer type the profile points to, and the reason in one sentence."""
    if (prof.distinct <= cfg.label_max_classes and prof.rows >= cfg.label_min_rows_per_class * prof.distinct
            and prof.max_distinct_words <= cfg.label_max_words):
        return "label", (f"{prof.distinct} distinct answers over {prof.rows} rows (label: at most "
                         f"{cfg.label_max_classes} of at most {cfg.label_max_words} words, at least "
                         f"{cfg.label_min_rows_per_class} rows each)")
    verbatim = f"{prof.verbatim_share:.0%} of answers occur verbatim in their gold document"
    words = f"the median answer has {prof.median_words:g} words"
    if prof.verbatim_share >= cfg.span_min_verbatim and prof.median_words <= cfg.span_max_words:
        return "span", (f"{verbatim} (span: at least {cfg.span_min_verbatim:.0%}) and {words} "
                        f"(at most {cfg.span_max_words:g}); {prof.distinct} distinct answers")
    return "free_form", (f"{verbatim} and {words} (span needs at least {cfg.span_min_verbatim:.0%} and at most "
                         f"{cfg.span_max_words:g} words); not labels: {prof.distinct} distinct answers of up to "
                         f"{prof.max_distinct_words} words")


def labels_of(qa: pd.DataFrame) -> list[str]:
    """The distinct answers, most frequent first (ties by name), each in its most common written form."""
    forms: dict[str, Counter] = {}
    for answers in qa["answer"]:
        if len(answers):
            forms.setdefault(normalize_answer(answers[0]), Counter())[answers[0].strip()] += 1
    ranked = sorted(forms.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return [c.most_common(1)[0][0] for _, c in ranked]


def canonical_label(text: str, labels: list[str]) -> str | None:
    """The label a text names (normalised equality, else the label it starts with), or None."""
    norm = normalize_answer(text)
    by_norm = {normalize_answer(label): label for label in labels}
    if norm in by_norm:
        return by_norm[norm]
    starts = [label for n, label in by_norm.items() if n and norm.startswith(n + " ")]
    return starts[0] if len(starts) == 1 else None


@dataclass(frozen=True)
class AnswerSettings:
    """The resolved answer type of a dataset and how it was decided."""

    answer_type: AnswerType
    declared: bool
    reason: str
    labels: list[str] | None
    profile: AnswerProfile
    filled: dict[str, object]  # settings the type filled in (config key -> value)

    def to_markdown(self) -> str:
        p = self.profile
        lines = ["# Answer type", "", f"**{self.answer_type}** ({'declared' if self.declared else 'inferred'}): "
                 f"{self.reason}.", "", f"- rows: {p.rows}, distinct answers: {p.distinct}",
                 f"- verbatim in the gold document: {p.verbatim_share:.1%}",
                 f"- answer words, median: {p.median_words:g}",
                 "- answer characters: " + ", ".join(f"{k} {v:g}" for k, v in p.chars.items()),
                 "- most frequent answers (normalised): " + ", ".join(
                     f"{a if len(a) <= 40 else a[:37] + '...'!r} ({n})" for a, n in p.top_answers)]
        if self.labels:
            lines.append(f"- labels: {', '.join(self.labels)}")
        lines += ["", "Settings that follow from the type (unless the config sets them):"]
        lines += [f"- `{k}`: {v}" for k, v in self.filled.items()] or ["- none"]
        return "\n".join(lines) + "\n"


def free_form_max_new_tokens(answers: list[str], count_tokens: Callable[[list[str]], list[int]],
                             cfg: PipelineConfig) -> int:
    """A quantile of the training answers' token counts times a margin, within [floor, cap]."""
    sizing = cfg.generation.free_form_sizing
    counts = count_tokens(answers) if answers else [sizing.floor]
    wanted = math.ceil(float(np.quantile(counts, sizing.quantile)) * sizing.margin)
    return int(min(sizing.cap, max(sizing.floor, wanted)))


def resolve(cfg: PipelineConfig, qa: pd.DataFrame, documents: pd.DataFrame,
            count_tokens: Callable[[list[str]], list[int]]) -> tuple[PipelineConfig, AnswerSettings]:
    """The config with the answer type decided and its consequences filled in, and how it was decided.

    count_tokens: the base model's tokenizer (token counts of free_form training answers).
    """
    prof = profile(qa, documents)
    declared = cfg.data.answer_type != "auto"
    kind, reason = (cfg.data.answer_type, "declared in data.answer_type") if declared else infer(
        prof, cfg.data.inference)
    labels = (list(cfg.data.labels) if cfg.data.labels else labels_of(qa)) if kind == "label" else None
    defaults = DEFAULTS[kind]
    gen, val, champ = cfg.generation, cfg.validation, cfg.champion
    filled: dict[str, object] = {}
    gen_update: dict[str, object] = {}
    if "system_prompt" not in gen.model_fields_set:
        gen_update["system_prompt"] = defaults.system_prompt.format(labels=", ".join(labels or []))
    if "context_instruction" not in gen.model_fields_set:
        gen_update["context_instruction"] = defaults.context_instruction
    if "max_new_tokens" not in gen.model_fields_set and kind != "span":
        train = [a[0] for a, s in zip(qa["answer"], qa["split"], strict=True) if s == "train" and len(a)]
        gen_update["max_new_tokens"] = (free_form_max_new_tokens(train, count_tokens, cfg) if kind == "free_form"
                                        else LABEL_MAX_NEW_TOKENS)
    filled |= {f"generation.{k}": v for k, v in gen_update.items()}
    val_update = {} if "answer_chars" in val.model_fields_set else {"answer_chars": defaults.answer_chars}
    champ_update = {} if "objective" in champ.model_fields_set else {"objective": defaults.objective}
    filled |= {f"validation.{k}": v for k, v in val_update.items()} | {f"champion.{k}": v
                                                                        for k, v in champ_update.items()}
    resolved = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"answer_type": kind, "labels": labels}),
        "generation": gen.model_copy(update=gen_update), "validation": val.model_copy(update=val_update),
        "champion": champ.model_copy(update=champ_update)})
    return resolved, AnswerSettings(kind, declared, reason, labels, prof, filled)


def answer_type_record(settings: AnswerSettings) -> RunRecord:
    """How the answer type was decided, on the pipeline's parent run."""
    params = {"answer_type": settings.answer_type, "answer_type_declared": settings.declared}
    if settings.labels:
        params["labels"] = ",".join(settings.labels)
    return RunRecord(tags={"answer_type": settings.answer_type}, params=params,
                     metrics={"answers_verbatim_share": settings.profile.verbatim_share,
                              "answers_distinct": settings.profile.distinct},
                     texts={"answer_type.md": settings.to_markdown()})
