"""`ragtune inspect`: first contact with a new dataset, and a starter config that runs on it.

The profile: counts, splits, the inferred answer type and why, answer and document lengths, the
share of answers found verbatim, and the rows that the default validation would reject. The
starter config takes a template (configs/default.yaml) and fits it to the data: the answer type
(and label set), bounds that the data's own lengths and split shares meet, quarantine for the few
rows that still break a row rule, type defaults for prompts, decoding and the objective, its own
index, adapter, experiment and model names, and a cap on the test questions of a first run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from tasks.answer_types import AnswerSettings, resolve
from tasks.data_loading import Dataset, load_dataset
from tasks.quarantine import quarantine_table, quarantined_qa_rows
from tasks.schema import SPLITS
from tasks.settings import ConfigError, DataConfig, PipelineConfig, ValidationConfig, config_from_dict
from tasks.validation import ValidationReport, validate_dataset

FIRST_RUN_TEST_QUESTIONS = 200  # a first run on 2 CPU cores should finish within the hour
SHARE_SLACK = 0.05  # split bounds around the data's own shares
QUARANTINE_SLACK = 0.02  # quarantine share above what the data needs


@dataclass
class Inspection:
    dataset: Dataset
    answers: AnswerSettings
    splits: dict[str, int]
    doc_chars: dict[str, float]
    default_report: ValidationReport  # the default validation bounds, with the inferred answer type
    starter_report: ValidationReport  # the starter config's validation (quarantine applied by the run)
    config: dict[str, Any]  # the starter config
    notes: list[str]  # what the starter config changed and why


def _lengths(values: list[int]) -> dict[str, float]:
    arr = np.array(values or [0])
    return {"min": float(arr.min()), "median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


def _slug(path: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (path.stem or path.name).lower()).strip("-") or "data"


def _fit_bounds(dataset: Dataset, cfg: ValidationConfig, splits: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    """Validation bounds that the data's own lengths and split shares meet."""
    notes, out = [], {}
    docs = dataset.documents["text"].map(len)
    if docs.min() < cfg.doc_chars[0]:
        out["doc_chars"] = [int(docs.min()), None]
        notes.append(f"validation.doc_chars lowered to {int(docs.min())} (the shortest document)")
    questions = dataset.qa["question"].map(len)
    if questions.min() < cfg.question_chars[0] or questions.max() > cfg.question_chars[1]:
        out["question_chars"] = [min(cfg.question_chars[0], int(questions.min())),
                                 max(cfg.question_chars[1], int(questions.max()))]
        notes.append(f"validation.question_chars set to {out['question_chars']} (the data's questions)")
    total = sum(splits.values()) or 1
    bounds = {}
    for split, (low, high) in cfg.split_bounds.items():
        share = splits.get(split, 0) / total
        new = (min(low, max(0.0, round(share - SHARE_SLACK, 2))), max(high, min(1.0, round(share + SHARE_SLACK, 2))))
        bounds[split] = list(new)
        if new != (low, high):
            notes.append(f"validation.split_bounds.{split} widened to {list(new)} (the data's own {split} share "
                         f"is {share:.2f})")
    out["split_bounds"] = bounds
    return out, notes


def inspect_dataset(path: Path, template: dict[str, Any]) -> Inspection:
    """Profile the dataset at `path` and fit the `template` config (a raw YAML mapping) to it."""
    kept = {k: v for k, v in (template.get("data") or {}).items() if k not in ("path", "answer_type", "labels")}
    try:
        data_cfg = DataConfig(path=path, **kept)
    except ValidationError as err:
        raise ConfigError(f"template data section: {err}") from None
    dataset = load_dataset(data_cfg)
    name = _slug(path)
    raw = yaml.safe_load(yaml.safe_dump(template))  # a deep copy
    raw["data"] = {"path": str(path), **kept}
    for section, key in (("generation", "max_new_tokens"), ("generation", "system_prompt"),
                         ("generation", "context_instruction"), ("champion", "objective"),
                         ("validation", "answer_chars")):
        raw.get(section, {}).pop(key, None)  # the answer type decides these
    base = config_from_dict(raw, "template")
    prof_cfg, settings = resolve(base, dataset.qa, dataset.documents, lambda texts: [len(t.split()) for t in texts])
    splits = {s: int((dataset.qa["split"] == s).sum()) for s in SPLITS}
    default_report = validate_dataset(dataset.documents, dataset.qa, prof_cfg.validation, dataset.source,
                                      settings.answer_type, settings.labels)

    raw["data"] = {"path": str(path), "answer_type": settings.answer_type, **kept}
    if settings.labels:
        raw["data"]["labels"] = settings.labels
    validation, notes = _fit_bounds(dataset, prof_cfg.validation, splits)
    answers = dataset.qa["answer"].map(lambda a: max(map(len, a)) if len(a) else 0)
    low, high = prof_cfg.validation.answer_chars
    if answers.max() > high:
        validation["answer_chars"] = [low, int(answers.max())]
        notes.append(f"validation.answer_chars raised to {int(answers.max())} (the longest answer)")
    raw["validation"] = {**raw.get("validation", {}), **validation}
    if settings.answer_type != "span":
        raw.get("champion", {}).get("constraints", {}).pop("hallucination_rate", None)
    raw.setdefault("index", {})["root"] = f"artifacts/{name}/index"
    raw.setdefault("finetune", {})["output_root"] = f"artifacts/{name}/adapters"
    raw["cache_root"] = f"artifacts/{name}/cache"
    raw.setdefault("champion", {})["model_name"] = f"ragtune-{name}"
    raw.setdefault("mlflow", {})["experiment"] = f"ragtune-{name}"
    if splits["test"] > FIRST_RUN_TEST_QUESTIONS and "max_questions_per_split" not in raw["data"]:
        raw["data"]["max_questions_per_split"] = {"test": FIRST_RUN_TEST_QUESTIONS}
        notes.append(f"data.max_questions_per_split.test: {FIRST_RUN_TEST_QUESTIONS} of {splits['test']} test "
                     "questions for a first run (remove it for the full comparison)")

    starter = _starter_validation(raw, dataset, settings, notes)
    return Inspection(dataset, settings, splits, _lengths(dataset.documents["text"].map(len).tolist()),
                      default_report, starter, raw, notes)


def _starter_validation(raw: dict[str, Any], dataset: Dataset, settings: AnswerSettings,
                        notes: list[str]) -> ValidationReport:
    """Validate under the starter config; rows that still break a row rule are quarantined by the run."""
    cfg = _config(raw)
    report = validate_dataset(dataset.documents, dataset.qa, cfg.validation, dataset.source, settings.answer_type,
                              settings.labels)
    if report.success or not all(f.waivable for f in report.failures):
        return report
    rows = quarantined_qa_rows(quarantine_table(dataset, report))
    share = math.ceil((len(rows) / len(dataset.qa) + QUARANTINE_SLACK) * 100) / 100
    raw["validation"] |= {"on_failure": "quarantine",
                          "max_quarantined_share": max(share, ValidationConfig().max_quarantined_share)}
    notes.append(f"validation.on_failure: quarantine ({len(rows)} QA rows break a row rule and are dropped with "
                 "the rule logged; see the failures below)")
    return report


def _config(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return config_from_dict(raw, "starter config")
    except ConfigError as err:  # a template the data cannot fit is the user's to fix
        raise ConfigError(f"the starter config does not validate: {err}") from None


def read_template(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a config file to start from (validated when the starter config is built)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"template config not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"template config {path} must be a mapping at the top level")
    return raw


def write_config(inspection: Inspection, out: Path) -> None:
    """The starter config as YAML, with a header saying what was inferred and changed."""
    a = inspection.answers
    header = [f"# Starter config written by `ragtune inspect` for {inspection.dataset.source}.",
              f"# Answer type {a.answer_type} ({'declared' if a.declared else 'inferred'}): {a.reason}."]
    header += [f"# - {note}" for note in inspection.notes]
    header.append("# Every key is documented in tasks/settings.py; run it with: ragtune run --config " + str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header) + "\n" + yaml.safe_dump(inspection.config, sort_keys=False))
