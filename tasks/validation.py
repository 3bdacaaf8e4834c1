"""Validate stage: Great Expectations suites over the normalised tables (ephemeral context, offline).

Three suites run in one ephemeral GX context: "documents", "qa" and "splits". Cross-table rules
(gold document exists, answer occurs in its document, train/test leakage, split shares) are
computed as helper columns on copies of the tables (tasks.validation_columns) and then checked by
ordinary expectations, so every rule is a real GX expectation with counts and record ids in the
result. Each row carries its id (and a `row` position) as `unexpected_index_column_names`, so
examples name the record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from tasks.errors import UserError
from tasks.offline import enable_offline_mode
from tasks.records import RunRecord
from tasks.schema import OPTIONAL_DOC_COLUMNS, QA_COLUMNS, REQUIRED_DOC_COLUMNS, SPLITS
from tasks.settings import ValidationConfig
from tasks.text import normalize_answer
from tasks.validation_columns import ROW, answer_list, documents_with_columns, qa_with_columns


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: which rule, how many records break it, and readable examples."""

    table: str
    expectation: str
    column: str | None
    rule: str
    unexpected_count: int
    examples: list[str]
    key: str | None = None  # the config key that relaxes the rule
    waivable: bool = True  # a row rule whose failing rows may be quarantined
    rows: list[int] = field(default_factory=list)  # positions of the failing records in their table

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table


@dataclass
class ValidationReport:
    """Outcome of all suites for one data source; `results` holds the full GX results (JSON)."""

    source: str
    success: bool
    failures: list[ExpectationFailure] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # table -> the file it was read from

    def to_markdown(self) -> str:
        """A readable report: header, pass/fail, counts and a table of failing expectations."""
        status = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation {status}: `{self.source}`", ""]
        for key, value in self.statistics.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            lines.append(f"- {key.replace('_', ' ')}: {value}")
        if self.failures:
            lines += ["", "| table | rule | expectation | column | failing | relax with | examples |",
                      "|---|---|---|---|---|---|---|"]
            for f in self.failures:
                examples = "<br>".join(_md_cell(e) for e in f.examples) or "-"
                lines.append(f"| {f.table} | {_md_cell(f.rule)} | `{f.expectation}` | {f.column or '-'} "
                             f"| {f.unexpected_count} | {f'`{f.key}`' if f.key else '-'} | {examples} |")
        else:
            lines += ["", "All expectations passed."]
        return "\n".join(lines) + "\n"


class DataValidationError(UserError):
    """Raised when a suite fails; str() lists every failing rule with examples and names the source path."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [f"data validation failed for {report.source}: {len(report.failures)} rule(s) broken"]
        for f in report.failures:
            relax = f"; relax with {f.key}" if f.key else ""
            file = f" in {report.files[f.table]}" if f.table in report.files else ""
            lines.append(f"  - [{f.where}] {f.rule}{file}: {f.unexpected_count} failing ({f.expectation}{relax})")
            lines += [f"      {e}" for e in f.examples]
        if any(f.waivable for f in report.failures):
            fatal = [f.where for f in report.failures if not f.waivable]
            lines.append("  To drop the failing rows and go on instead: validation.on_failure=quarantine "
                         "(up to validation.max_quarantined_share of the QA rows)"
                         + (f"; {', '.join(fatal)} cannot be quarantined" if fatal else ""))
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------- rules

Explain = Callable[[pd.Series], str]  # failing row -> reason (after "<id>=<value>: ")


@dataclass(frozen=True)
class _Rule:
    expectation: Any  # a great_expectations Expectation
    rule: str
    explain: Explain | None = None
    key: str | None = None  # the config key that relaxes it
    waivable: bool = True  # False: duplicate ids, leakage, split shares, missing columns always stop the run

    @property
    def column(self) -> str | None:
        return getattr(self.expectation, "column", None)


def _gx() -> Any:
    enable_offline_mode()  # Great Expectations reads its analytics switch at import
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # not its temporary docs-site directory
    return gx


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _plural(word: str, n: int) -> str:
    return word if n == 1 else f"{word}s"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _schema_rules(gx: Any, frame: pd.DataFrame, required: tuple[str, ...], types: dict[str, str]) -> list[_Rule]:
    E = gx.expectations
    rules = [_Rule(E.ExpectColumnToExist(column=c), f"column '{c}' exists", waivable=False) for c in required]
    rules += [_Rule(E.ExpectColumnValuesToNotBeNull(column=c), f"{c} is present (not null)") for c in required]
    rules += [_Rule(E.ExpectColumnValuesToBeOfType(column=c, type_=t), f"{c} values are of type {t}")
              for c, t in types.items() if c in required or c in frame.columns]
    return rules


def _doc_rules(gx: Any, docs: pd.DataFrame, cfg: ValidationConfig) -> list[_Rule]:
    E = gx.expectations
    low, high = cfg.doc_chars
    bounds = f"within [{low}, {high}]" if high is not None else f"at least {low}"
    types = {"doc_id": "str", "title": "str", "text": "str", **{c: "str" for c in OPTIONAL_DOC_COLUMNS}}
    return [
        *_schema_rules(gx, docs, REQUIRED_DOC_COLUMNS, types),
        _Rule(E.ExpectColumnValuesToBeUnique(column="doc_id"), "doc_id is unique",
              lambda r: f"duplicated (row {r[ROW]})", waivable=False),
        _Rule(E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"), "document text is not empty",
              lambda r: f"text is empty ({_short(r['text'])})"),
        _Rule(E.ExpectColumnValuesToBeBetween(column="text_chars", min_value=low, max_value=high),
              f"document text length {bounds} characters",
              lambda r: f"text has {int(r['text_chars'])} characters", "validation.doc_chars"),
    ]


def _answer_rules(gx: Any, answer_type: str, labels: list[str] | None) -> list[_Rule]:
    """What an answer must be for its type: in its gold document (span), one of the labels (label)."""
    E = gx.expectations
    if answer_type == "span":
        return [_Rule(E.ExpectColumnValuesToBeInSet(column="answer_in_gold_doc", value_set=[True]),
                      "the gold answer occurs in its gold document (normalised)",
                      lambda r: f"{_plural('answer', len(answer_list(r['answer'])))} "
                                f"{', '.join(_short(a, 60) for a in answer_list(r['answer']))} "
                                f"not in doc {r['doc_id']}",
                      "data.answer_type (free_form answers need not occur in the document)")]
    if answer_type == "label":
        return [_Rule(E.ExpectColumnValuesToBeInSet(column="answer_in_label_set", value_set=[True]),
                      f"the answer is one of the labels ({', '.join(labels or [])})",
                      lambda r: f"answer {_short(answer_list(r['answer'])[:1])} is not a label", "data.labels")]
    return []


def _qa_rules(gx: Any, qa: pd.DataFrame, cfg: ValidationConfig, doc_ids: list[str],
              train_questions: list[str]) -> list[_Rule]:
    E = gx.expectations
    q_low, q_high = cfg.question_chars
    a_low, a_high = cfg.answer_chars
    types = {"qa_id": "str", "question": "str", "answer": "list", "doc_id": "str", "split": "str"}
    return [
        *_schema_rules(gx, qa, QA_COLUMNS, types),
        _Rule(E.ExpectColumnValuesToBeUnique(column="qa_id"), "qa_id is unique",
              lambda r: f"duplicated (row {r[ROW]})", waivable=False),
        _Rule(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
              f"split is one of {', '.join(SPLITS)}", lambda r: f"split {_short(r['split'])}"),
        _Rule(E.ExpectColumnValuesToNotMatchRegex(column="question", regex=r"^\s*$"), "question is not empty",
              lambda r: f"question is empty ({_short(r['question'])})"),
        _Rule(E.ExpectColumnValuesToBeBetween(column="question_chars", min_value=q_low, max_value=q_high),
              f"question length within [{q_low}, {q_high}] characters",
              lambda r: f"question {_short(r['question'], 60)} has {int(r['question_chars'])} characters",
              "validation.question_chars"),
        _Rule(E.ExpectColumnValuesToBeBetween(column="answer_count", min_value=1), "answer list is not empty",
              lambda r: f"no accepted answer ({_short(r['answer'])})"),
        _Rule(E.ExpectColumnValuesToBeBetween(column="answer_chars_min", min_value=a_low),
              f"every answer has at least {a_low} character(s)",
              lambda r: f"answer {_short(min(answer_list(r['answer']), key=len))} is too short",
              "validation.answer_chars"),
        _Rule(E.ExpectColumnValuesToBeBetween(column="answer_chars_max", max_value=a_high),
              f"every answer has at most {a_high} characters",
              lambda r: f"answer of {int(r['answer_chars_max'])} characters", "validation.answer_chars"),
        _Rule(E.ExpectColumnValuesToBeInSet(column="doc_id", value_set=doc_ids), "every QA doc_id exists in documents",
              lambda r: f"doc_id {_short(r['doc_id'])} not in documents"),
        _Rule(E.ExpectColumnValuesToNotBeInSet(column="test_question_normalised", value_set=train_questions),
              "no test question also appears in train (exact, normalised)",
              lambda r: f"test question {_short(r['question'], 60)} is also train qa_id={r['train_duplicate_of']}",
              waivable=False),
        _Rule(E.ExpectColumnValuesToBeBetween(column="train_similarity", max_value=cfg.near_duplicate_ratio,
                                              strict_max=True),
              f"no test question near-duplicates a train question (similarity < {cfg.near_duplicate_ratio})",
              lambda r: f"test question {_short(r['question'], 60)} ~ train qa_id={r['closest_train_qa_id']} "
                        f"{_short(r['closest_train_question'], 60)} (similarity {r['train_similarity']:.2f})",
              "validation.near_duplicate_ratio", waivable=False),
        _Rule(E.ExpectColumnValuesToBeBetween(column="same_answer_similarity",
                                              max_value=cfg.near_duplicate_same_answer_ratio, strict_max=True),
              "no test question rewords a train question with the same gold document and answer "
              f"(similarity < {cfg.near_duplicate_same_answer_ratio})",
              lambda r: f"test question {_short(r['question'], 60)} ~ train qa_id={r['same_answer_train_qa_id']} "
                        f"{_short(r['same_answer_train_question'], 60)}, both doc {r['doc_id']} answer "
                        f"{_short(r['same_answer_shared'], 40)} (similarity {r['same_answer_similarity']:.2f})",
              "validation.near_duplicate_same_answer_ratio", waivable=False),
    ]


def _split_rules(gx: Any, cfg: ValidationConfig, counts: dict[str, int]) -> list[_Rule]:
    total = sum(counts.values())

    def explain(split: str, low: float, high: float) -> Explain:
        return lambda r: (f"{split} share is {r[f'{split}_share']:.3f} ({counts.get(split, 0)} of {total} QA pairs), "
                          f"allowed [{low}, {high}]")

    return [_Rule(gx.expectations.ExpectColumnValuesToBeBetween(column=f"{s}_share", min_value=lo, max_value=hi),
                  f"{s} share of QA pairs within [{lo}, {hi}]", explain(s, lo, hi), f"validation.split_bounds.{s}",
                  waivable=False)
            for s, (lo, hi) in cfg.split_bounds.items()]


def _strict_json(value: Any) -> Any:
    """GX results with NaN/inf replaced by None, so they are strict JSON."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------- suites

def _context(gx: Any) -> Any:
    """An ephemeral context with GX's tqdm "Calculating Metrics" bars switched off."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _examples(rule: _Rule, info: dict, frame: pd.DataFrame, id_column: str | None, limit: int) -> list[str]:
    rows = [frame.iloc[int(entry[ROW])] for entry in (info.get("partial_unexpected_index_list") or [])
            if isinstance(entry, dict) and ROW in entry][:limit]
    if not rows and len(frame) == 1 and id_column is None and rule.explain:  # one-row table (splits)
        rows = [frame.iloc[0]]
    examples = []
    for row in rows:
        reason = rule.explain(row) if rule.explain else f"{rule.column}={_short(row.get(rule.column))}"
        if id_column is None:
            examples.append(reason)
        else:
            record = row.get(id_column) if id_column in row else None
            name = f"row {row[ROW]}" if _is_missing(record) else record
            examples.append(f"{id_column}={name}: {reason}")
    if not examples:
        examples = [_short(v) for v in (info.get("partial_unexpected_list") or [])[:limit]]
    return examples


def _run_suite(context: Any, name: str, frame: pd.DataFrame, rules: list[_Rule], id_column: str | None,
               cfg: ValidationConfig) -> tuple[dict, list[ExpectationFailure], int]:
    gx = _gx()
    batch = context.data_sources.add_pandas(f"{name}-source").add_dataframe_asset(name) \
        .add_batch_definition_whole_dataframe(f"{name}-batch")
    # Rules on a column that is absent are left to the ExpectColumnToExist rules, which name it.
    active = [r for r in rules
              if type(r.expectation).__name__ == "ExpectColumnToExist" or r.column is None or r.column in frame]
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite", expectations=[r.expectation for r in active]))
    active = [replace(r, expectation=e) for e, r in zip(suite.expectations, active, strict=True)]  # with ids
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}-validation",
                                                                            data=batch, suite=suite))
    index_columns = [c for c in (id_column, ROW) if c and c in frame]
    # COMPLETE: every failing record's index, so that quarantine can drop exactly those rows.
    result_format = {"result_format": "COMPLETE", "partial_unexpected_count": cfg.max_examples,
                     "unexpected_index_column_names": index_columns}
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    by_id = {res.expectation_config.id: res for res in result.results}
    failures = []
    for rule in active:  # suite order, not GX's result order
        res = by_id[rule.expectation.id]
        if res.success:
            continue
        info = res.result or {}
        examples = _examples(rule, info, frame, id_column, cfg.max_examples)
        error = (res.exception_info or {}).get("exception_message") if isinstance(res.exception_info, dict) else None
        if error and (res.exception_info or {}).get("raised_exception"):
            examples.append(f"error: {error}")
        if type(rule.expectation).__name__ == "ExpectColumnToExist":
            examples = [f"column '{rule.column}' missing; columns are {sorted(c for c in frame if c != ROW)}"]
        count = info.get("unexpected_count")
        rows = [int(e[ROW]) for e in info.get("unexpected_index_list") or [] if isinstance(e, dict) and ROW in e]
        failures.append(ExpectationFailure(name, res.expectation_config.type, rule.column, rule.rule,
                                           int(count) if count else 1, examples, rule.key, rule.waivable, rows))
    return _strict_json(result.to_json_dict()), failures, len(active)


def validate_dataset(documents: pd.DataFrame, qa: pd.DataFrame, cfg: ValidationConfig, source: str,
                     answer_type: str = "span", labels: list[str] | None = None,
                     files: dict[str, str] | None = None) -> ValidationReport:
    """Run the documents, QA and splits suites for data of `answer_type`; never raises on bad data
    (see `ensure_valid`). `files`: the file each table was read from, named in the failures."""
    gx = _gx()
    context = _context(gx)
    docs = documents_with_columns(documents)
    qa_frame = qa_with_columns(docs, qa, labels)
    doc_ids = sorted({d for d in docs["doc_id"] if isinstance(d, str)}) if "doc_id" in docs else []
    train_questions: list[str] = []
    if {"question", "split"} <= set(qa_frame.columns):
        train = qa_frame.loc[qa_frame["split"] == "train", "question"]
        train_questions = sorted({normalize_answer(q) for q in train if isinstance(q, str)} - {""})
    counts = {s: int((qa["split"] == s).sum()) for s in SPLITS} if "split" in qa else dict.fromkeys(SPLITS, 0)
    total = len(qa)
    shares = {f"{s}_share": (counts.get(s, 0) / total if total else 0.0) for s in dict.fromkeys([*SPLITS,
                                                                                               *cfg.split_bounds])}
    splits = pd.DataFrame([shares])

    results: dict[str, Any] = {}
    failures: list[ExpectationFailure] = []
    evaluated = 0
    for name, frame, rules, id_column in (
        ("documents", docs, _doc_rules(gx, docs, cfg), "doc_id"),
        ("qa", qa_frame, _qa_rules(gx, qa_frame, cfg, doc_ids, train_questions)
         + _answer_rules(gx, answer_type, labels), "qa_id"),
        ("splits", splits, _split_rules(gx, cfg, counts), None),
    ):
        results[name], found, n = _run_suite(context, name, frame, rules, id_column, cfg)
        failures += found
        evaluated += n
    statistics = {"documents": len(documents), "qa": total, "qa_per_split": counts, "answer_type": answer_type,
                  "expectations_evaluated": evaluated, "expectations_failed": len(failures)}
    if labels and "answer_label" in qa_frame:
        statistics |= {f"{s}_per_label": {label: int(n) for label, n in
                                          qa_frame.loc[qa_frame["split"] == s, "answer_label"].value_counts().items()}
                       for s in SPLITS}
    return ValidationReport(source, not failures, failures, results, statistics, dict(files or {}))


def ensure_valid(report: ValidationReport) -> None:
    """Raise DataValidationError (listing every failing rule) unless the report passed."""
    if not report.success:
        raise DataValidationError(report)


def validation_record(report: ValidationReport, fingerprint: str) -> RunRecord:
    """The validate run in MLflow: pass/fail, the readable report and the full GX result."""
    return RunRecord(tags={"data_fingerprint": fingerprint},
                     metrics={"validation_success": float(report.success), "failed_expectations": len(report.failures)},
                     dicts={"validation/result.json": report.results},
                     texts={"validation/report.md": report.to_markdown()})
