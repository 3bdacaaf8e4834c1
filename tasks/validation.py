"""Validate stage: Great Expectations suites over the normalised tables (ephemeral context, offline).

Cross-table rules (gold doc exists, answer occurs in its document, train/test leakage, split
shares) are computed as helper columns and then checked by ordinary expectations, so every
rule is a real GE expectation with counts and examples in the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.metrics import normalize_answer
from tasks.settings import SPLITS, ValidationConfig

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass(frozen=True)
class ExpectationFailure:
    table: str
    expectation: str
    column: str | None
    rule: str
    unexpected_count: int
    examples: list[str]


@dataclass
class ValidationReport:
    source: str
    success: bool
    failures: list[ExpectationFailure] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation {status}: {self.source}", ""]
        lines += [f"- {k}: {v}" for k, v in self.statistics.items()]
        if self.failures:
            lines += ["", "| table | rule | expectation | failing | examples |", "|---|---|---|---|---|"]
            for f in self.failures:
                examples = "<br>".join(e.replace("|", "\\|") for e in f.examples)
                lines.append(f"| {f.table} | {f.rule} | `{f.expectation}` | {f.unexpected_count} | {examples} |")
        return "\n".join(lines) + "\n"


class DataValidationError(Exception):
    """A validation suite failed; the message lists every failing rule with examples."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [f"data validation failed for {report.source}: {len(report.failures)} rule(s) broken"]
        for f in report.failures:
            lines.append(f"  [{f.table}] {f.rule} ({f.unexpected_count} failing; {f.expectation})")
            lines += [f"      {e}" for e in f.examples]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Rule:
    expectation: Any
    rule: str
    describe: Any = None  # callable(row) -> str for examples; default: id and value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lengths(series: pd.Series) -> pd.Series:
    return series.map(lambda v: len(v) if isinstance(v, str) else 0)


def _qa_frame(documents: pd.DataFrame, qa: pd.DataFrame, cfg: ValidationConfig) -> pd.DataFrame:
    """QA copy with helper columns for the cross-table rules."""
    from rapidfuzz import fuzz, process

    doc_text = dict(zip(documents["doc_id"], documents["text"], strict=False))
    frame = qa.copy()
    answers = frame["answer"].map(lambda a: [x for x in a if isinstance(x, str)] if isinstance(a, list) else [])
    frame["answer_count"] = answers.map(len)
    frame["shortest_answer_chars"] = answers.map(lambda a: min((len(x) for x in a), default=0))
    frame["longest_answer_chars"] = answers.map(lambda a: max((len(x) for x in a), default=0))
    frame["question_chars"] = _lengths(frame["question"])
    norm_docs = {d: normalize_answer(t) for d, t in doc_text.items() if isinstance(t, str)}
    frame["answer_in_gold_doc"] = [
        any(normalize_answer(a) and normalize_answer(a) in norm_docs.get(d, "") for a in ans)
        for ans, d in zip(answers, frame["doc_id"], strict=True)
    ]
    norm_q = frame["question"].map(lambda q: normalize_answer(q) if isinstance(q, str) else "")
    train_q = norm_q[frame["split"] == "train"].tolist()
    similarity = [0.0] * len(frame)
    closest = [""] * len(frame)
    if train_q:
        for i in frame.index[frame["split"] == "test"]:
            match = process.extractOne(norm_q[i], train_q, scorer=fuzz.ratio)
            similarity[frame.index.get_loc(i)] = match[1] / 100
            closest[frame.index.get_loc(i)] = match[0]
    frame["max_train_similarity"] = similarity
    frame["closest_train_question"] = closest
    return frame


def _doc_rules(cfg: ValidationConfig) -> list[_Rule]:
    import great_expectations as gx

    low, high = cfg.doc_chars
    return [
        *[_Rule(gx.expectations.ExpectColumnToExist(column=c), f"column '{c}' exists")
          for c in ("doc_id", "title", "text")],
        _Rule(gx.expectations.ExpectColumnValuesToNotBeNull(column="doc_id"), "doc_id is present"),
        _Rule(gx.expectations.ExpectColumnValuesToBeUnique(column="doc_id"), "doc_id is unique"),
        _Rule(gx.expectations.ExpectColumnValuesToNotBeNull(column="text"), "text is present"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="text_chars", min_value=max(1, low),
                                                            max_value=high),
              f"document text length within [{max(1, low)}, {high}] characters"),
    ]


def _qa_rules(cfg: ValidationConfig, doc_ids: list[str]) -> list[_Rule]:
    import great_expectations as gx

    q_low, q_high = cfg.question_chars
    a_low, a_high = cfg.answer_chars
    return [
        *[_Rule(gx.expectations.ExpectColumnToExist(column=c), f"column '{c}' exists")
          for c in ("qa_id", "question", "answer", "doc_id", "split")],
        _Rule(gx.expectations.ExpectColumnValuesToNotBeNull(column="qa_id"), "qa_id is present"),
        _Rule(gx.expectations.ExpectColumnValuesToBeUnique(column="qa_id"), "qa_id is unique"),
        _Rule(gx.expectations.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
              f"split is one of {list(SPLITS)}"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="question_chars", min_value=q_low,
                                                            max_value=q_high),
              f"question length within [{q_low}, {q_high}] characters"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="answer_count", min_value=1),
              "at least one accepted answer"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="shortest_answer_chars", min_value=a_low),
              f"every answer has at least {a_low} character(s)"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="longest_answer_chars", max_value=a_high),
              f"every answer has at most {a_high} characters"),
        _Rule(gx.expectations.ExpectColumnValuesToBeInSet(column="doc_id", value_set=doc_ids),
              "every QA doc_id exists in documents", lambda r: f"qa_id={r['qa_id']}: doc_id {r['doc_id']!r} unknown"),
        _Rule(gx.expectations.ExpectColumnValuesToBeInSet(column="answer_in_gold_doc", value_set=[True]),
              "the gold answer occurs in its gold document (normalised)",
              lambda r: f"qa_id={r['qa_id']}: answer {r['answer']!r} not in doc {r['doc_id']}"),
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column="max_train_similarity",
                                                            max_value=cfg.near_duplicate_ratio, strict_max=True),
              f"no test question duplicates a train question (similarity < {cfg.near_duplicate_ratio})",
              lambda r: f"qa_id={r['qa_id']}: {r['question']!r} ~ train {r['closest_train_question']!r} "
                        f"({r['max_train_similarity']:.2f})"),
    ]


def _split_rules(cfg: ValidationConfig) -> list[_Rule]:
    import great_expectations as gx

    return [
        _Rule(gx.expectations.ExpectColumnValuesToBeBetween(column=f"{s}_share", min_value=lo, max_value=hi),
              f"{s} share within [{lo}, {hi}]", lambda r, s=s: f"{s} share is {r[f'{s}_share']:.3f}")
        for s, (lo, hi) in cfg.split_bounds.items()
    ]


def _run_suite(context, name: str, frame: pd.DataFrame, rules: list[_Rule], id_column: str | None,
               cfg: ValidationConfig) -> tuple[dict, list[ExpectationFailure]]:
    import great_expectations as gx

    asset = context.data_sources.add_pandas(f"{name}-source").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}-batch")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite"))
    present = [r for r in rules if getattr(r.expectation, "column", None) in frame.columns
               or type(r.expectation).__name__ == "ExpectColumnToExist"]
    for r in present:
        suite.add_expectation(r.expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}-v", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame},
                            result_format={"result_format": "COMPLETE"})
    by_id = {r.expectation.id: r for r in present}
    failures = []
    for res in result.results:
        if res.success:
            continue
        rule = by_id[res.expectation_config.id]
        info = res.result or {}
        indices = info.get("unexpected_index_list") or []
        rows = [frame.loc[i] for i in indices[: cfg.max_examples] if i in frame.index]
        if rule.describe:
            examples = [rule.describe(row) for row in rows]
        elif id_column and rows:
            col = rule.expectation.column
            examples = [f"{id_column}={row.get(id_column)!r}: {col}={_short(row.get(col))}" for row in rows]
        else:
            examples = [str(v) for v in (info.get("partial_unexpected_list") or [])[: cfg.max_examples]]
        if not examples and res.exception_info and res.exception_info.get("raised_exception"):
            examples = [str(res.exception_info.get("exception_message"))]
        count = info.get("unexpected_count")
        failures.append(ExpectationFailure(name, res.expectation_config.type, getattr(rule.expectation, "column", None),
                                           rule.rule, int(count if count is not None else 1), examples))
    return result.to_json_dict(), failures


def validate_dataset(documents: pd.DataFrame, qa: pd.DataFrame, cfg: ValidationConfig,
                     source: str) -> ValidationReport:
    """Run the documents, QA and split suites; never raises on bad data (see ensure_valid)."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    docs = documents.copy()
    if "text" in docs:
        docs["text_chars"] = _lengths(docs["text"])
    doc_ids = docs["doc_id"].dropna().astype(str).tolist() if "doc_id" in docs else []
    qa_frame = _qa_frame(documents, qa, cfg)
    shares = qa["split"].value_counts(normalize=True) if len(qa) else pd.Series(dtype=float)
    splits = pd.DataFrame([{f"{s}_share": float(shares.get(s, 0.0)) for s in SPLITS}])

    results, failures = {}, []
    for name, frame, rules, id_col in (("documents", docs, _doc_rules(cfg), "doc_id"),
                                       ("qa", qa_frame, _qa_rules(cfg, doc_ids), "qa_id"),
                                       ("splits", splits, _split_rules(cfg), None)):
        results[name], found = _run_suite(context, name, frame, rules, id_col, cfg)
        failures += found
    stats = {"documents": len(documents), "qa_pairs": len(qa),
             **{f"qa_{s}": int((qa["split"] == s).sum()) for s in SPLITS},
             "expectations_failed": len(failures)}
    return ValidationReport(source, not failures, failures, results, stats)


def ensure_valid(report: ValidationReport) -> None:
    if not report.success:
        raise DataValidationError(report)
