"""The validate stage's outcome: the data the run goes on with, after an optional quarantine.

With `validation.on_failure: quarantine`, rows that break a row rule (a length bound, an answer
not in its document, an answer outside the label set, a missing value...) are dropped instead of
stopping the run: a failing document takes its QA rows with it, so nothing quarantined reaches
any split. Each dropped row is kept in a table with the rule it broke (an MLflow artifact of the
validate run). The run still stops when a rule that is never waived fails (duplicate ids,
train/test leakage, split shares, a missing column), when more than
`validation.max_quarantined_share` of the QA rows would go, or when the remaining data fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from tasks.data_loading import Dataset, fingerprint_tables
from tasks.records import RunRecord
from tasks.settings import PipelineConfig
from tasks.stage_cache import StageCache, stage_key
from tasks.validation import DataValidationError, ValidationReport, validate_dataset, validation_record

QUARANTINE_COLUMNS = ["table", "record", "row", "rule", "relax_with"]
WITH_ITS_DOCUMENT = "its gold document was quarantined"


class QuarantineLimitError(DataValidationError):
    """Quarantine would drop more rows than `validation.max_quarantined_share` allows."""

    def __init__(self, report: ValidationReport, dropped: int, total: int, limit: float):
        super().__init__(report)
        self.args = (f"{self.args[0]}\n  Quarantine would drop {dropped} of {total} QA rows "
                     f"({dropped / total:.1%}), more than validation.max_quarantined_share={limit}: "
                     "the run stops. Fix the rows above, relax the named bounds or raise that share.",)


@dataclass
class Validated:
    report: ValidationReport  # of the data the run goes on with
    dataset: Dataset
    quarantined: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUARANTINE_COLUMNS))
    before: ValidationReport | None = None  # the raw data's report, when rows were quarantined
    reused: bool = False  # the same data was validated with the same rules before: that outcome was reused


def quarantine_table(dataset: Dataset, report: ValidationReport) -> pd.DataFrame:
    """One row per (dropped record, broken rule); QA rows of dropped documents go with them."""
    rows = []
    for failure in report.failures:
        frame, id_column = (dataset.documents, "doc_id") if failure.table == "documents" else (dataset.qa, "qa_id")
        rows += [{"table": failure.table, "record": frame.iloc[i][id_column], "row": i, "rule": failure.rule,
                  "relax_with": failure.key or ""} for i in failure.rows]
    table = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    dropped_docs = set(table.loc[table["table"] == "documents", "record"])
    followers = dataset.qa.index[dataset.qa["doc_id"].isin(dropped_docs)]
    table = pd.concat([table, pd.DataFrame(
        [{"table": "qa", "record": dataset.qa.at[i, "qa_id"], "row": int(i), "rule": WITH_ITS_DOCUMENT,
          "relax_with": ""} for i in followers], columns=QUARANTINE_COLUMNS)], ignore_index=True)
    return table


def quarantined_qa_rows(table: pd.DataFrame) -> set[int]:
    """Positions of the QA rows a quarantine table drops (a row may break several rules)."""
    return set(table.loc[table["table"] == "qa", "row"])


def without_quarantined(dataset: Dataset, table: pd.DataFrame) -> Dataset:
    """The dataset less the rows a quarantine table drops."""
    if table.empty:
        return dataset
    doc_rows = set(table.loc[table["table"] == "documents", "row"])
    documents = dataset.documents.drop(index=sorted(doc_rows)).reset_index(drop=True)
    qa = dataset.qa.drop(index=sorted(quarantined_qa_rows(table))).reset_index(drop=True)
    return Dataset(documents, qa, fingerprint_tables(documents, qa), dataset.source, dataset.notes, dataset.files)


def validate_and_quarantine(dataset: Dataset, cfg: PipelineConfig) -> Validated:
    """Validate; with `on_failure: quarantine`, drop the failing rows and validate what remains.

    Never raises on bad data: the returned report fails when the run must stop (see `ensure_valid`),
    except that going over the quarantine limit raises QuarantineLimitError.
    """
    def check(data: Dataset) -> ValidationReport:
        return validate_dataset(data.documents, data.qa, cfg.validation, data.source, cfg.data.answer_type,
                                cfg.data.labels, dict(data.files))

    report = check(dataset)
    if report.success or cfg.validation.on_failure == "stop" or not all(f.waivable for f in report.failures):
        return Validated(report, dataset)
    table = quarantine_table(dataset, report)
    qa_rows = quarantined_qa_rows(table)
    if len(qa_rows) > cfg.validation.max_quarantined_share * len(dataset.qa):
        raise QuarantineLimitError(report, len(qa_rows), len(dataset.qa), cfg.validation.max_quarantined_share)
    kept = without_quarantined(dataset, table)
    return Validated(check(kept), kept, table, report)


def validation_key(dataset: Dataset, cfg: PipelineConfig) -> str:
    """What validation reads: the data (by content), where it came from (named in messages), the rules."""
    return stage_key(data=dataset.fingerprint, source=dataset.source, rules=cfg.validation.model_dump(mode="json"),
                     answer_type=cfg.data.answer_type, labels=cfg.data.labels)


def validate_cached(dataset: Dataset, cfg: PipelineConfig) -> Validated:
    """`validate_and_quarantine`, reusing the outcome of an earlier run on the same data and rules."""
    cache, key = StageCache(cfg.cache_root, "validate"), validation_key(dataset, cfg)
    if (stored := cache.get(key)) is not None:
        report, table, before = stored
        return Validated(report, without_quarantined(dataset, table), table, before, reused=True)
    validated = validate_and_quarantine(dataset, cfg)
    cache.put(key, (validated.report, validated.quarantined, validated.before))
    return validated


def validated_record(validated: Validated) -> RunRecord:
    """The validate run: the report of the data the run goes on with, and what was quarantined and why."""
    record = validation_record(validated.report, validated.dataset.fingerprint)
    record.tags["reused"] = str(validated.reused)
    if validated.before is not None:
        q = validated.quarantined
        record.metrics |= {"quarantined_documents": int(q.loc[q["table"] == "documents", "row"].nunique()),
                           "quarantined_qa": int(q.loc[q["table"] == "qa", "row"].nunique())}
        record.tables["quarantined.csv"] = q
        record.texts["validation/report_before_quarantine.md"] = validated.before.to_markdown()
    return record


def quarantine_summary(validated: Validated) -> str | None:
    """One line for the log when rows were quarantined."""
    if validated.before is None:
        return None
    q = validated.quarantined
    per_rule = q.groupby("rule")["record"].count().to_dict()
    return (f"quarantined {q.loc[q['table'] == 'documents', 'row'].nunique()} documents and "
            f"{q.loc[q['table'] == 'qa', 'row'].nunique()} QA rows: "
            + "; ".join(f"{rule} ({n})" for rule, n in per_rule.items()))
