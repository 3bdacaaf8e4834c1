"""Promote stage: apply the champion policy (tasks.champion) to this run's candidates, log the
challenger as a pyfunc, register it, and move the aliases.

The current champion is compared on this run's evaluation set: with its stored scores when it was
evaluated on the same set, else re-scored through its registered model on today's questions.
Every run's challenger is registered and gets the alias `challenger`; `champion` moves to it
only when the policy's decision says so. Version tags carry the lineage.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import tasks
from tasks.candidates import CandidateBundle
from tasks.champion import Decision, decide, per_question_scores, pick_challenger
from tasks.data_loading import Dataset
from tasks.evaluation import CandidateOutcome, evaluate_candidate, evaluation_questions
from tasks.exclusive import exclusive, lock_name
from tasks.metrics import bootstrap_ci
from tasks.models import embedding_model_dir
from tasks.records import RunRecord
from tasks.serving import ADAPTER_ARTIFACT, CANDIDATE_ARTIFACT, CONFIG_ARTIFACT, INDEX_ARTIFACT, RagtuneModel
from tasks.settings import PipelineConfig, config_to_yaml

CHAMPION, CHALLENGER = "champion", "challenger"
PREVIOUS_CHAMPION = "previous_champion"  # registered-model tag: the version a promotion replaced (A/B rollback)
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "peft", "faiss-cpu", "sentence-transformers", "pandas",
                    "pydantic", "pyyaml", "numpy")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question")]),
    outputs=Schema([ColSpec("string", "answer"), ColSpec("string", "sources"), ColSpec("double", "latency_ms")]),
)


def _requirements() -> list[str]:
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def current_champion(name: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias of the registered model points at now, or None."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_run_metrics(champion: ModelVersion) -> dict[str, float]:
    """The evaluation metrics recorded for the champion's candidate run."""
    run_id = champion.tags.get("candidate_run_id")
    return dict(MlflowClient().get_run(run_id).data.metrics) if run_id else {}


def champion_run_per_question(champion: ModelVersion) -> pd.DataFrame | None:
    """The per-question scores logged by the champion's candidate run (None if it has none)."""
    run_id, name = champion.tags.get("candidate_run_id"), champion.tags.get("candidate")
    if not (run_id and name):
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"tables/per_question_{name}.csv")
    except MlflowException:
        return None
    return pd.read_csv(path)


def bundle_key(bundle: CandidateBundle, serving_yaml: str) -> str:
    """Names what a registered version serves: the candidate, its adapter and index (content-keyed), the data,
    the evaluation set and the resolved config; not the runs that produced them."""
    what = {k: v for k, v in bundle.lineage.items() if k not in ("candidate_run_id", "adapter_run")}
    payload = json.dumps({"name": bundle.name, "adapter": Path(bundle.adapter_dir).name if bundle.adapter_dir else None,
                          "lineage": what, "config": serving_yaml}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _registered(name: str, key: str) -> ModelVersion | None:
    found = MlflowClient().search_model_versions(f"name = '{name}' and tags.bundle_key = '{key}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def log_and_register(bundle: CandidateBundle, cfg: PipelineConfig, promote: bool) -> tuple[ModelVersion, bool]:
    """Register the bundle as a pyfunc logged in the active run, unless a version serving exactly the same
    thing exists (then that one is reused: a run with nothing changed registers nothing, and the stage is
    safe to repeat); set `challenger` (and `champion`). Returns the version and whether it is new."""
    serving_cfg = cfg.model_copy(update={"model_cache": Path(cfg.model_cache).resolve()})
    serving_yaml = config_to_yaml(serving_cfg)
    key = bundle_key(bundle, serving_yaml)
    client = MlflowClient()
    mv = _registered(cfg.champion.model_name, key)
    if mv is None:
        with tempfile.TemporaryDirectory() as tmp:
            config_path, candidate_path = Path(tmp) / "config.yaml", Path(tmp) / "candidate.json"
            config_path.write_text(serving_yaml)
            candidate_path.write_text(json.dumps({"name": bundle.name, **bundle.lineage}, indent=2))
            artifacts = {CONFIG_ARTIFACT: str(config_path), CANDIDATE_ARTIFACT: str(candidate_path)}
            if bundle.adapter_dir:
                artifacts[ADAPTER_ARTIFACT] = bundle.adapter_dir
            if bundle.index_dir:
                artifacts[INDEX_ARTIFACT] = bundle.index_dir
            info = mlflow.pyfunc.log_model(
                name="model", python_model=RagtuneModel(), artifacts=artifacts,
                code_paths=[str(Path(tasks.__file__).parent)], pip_requirements=_requirements(),
                signature=SIGNATURE,
                registered_model_name=cfg.champion.model_name,
            )
        mv = client.get_model_version(cfg.champion.model_name, str(info.registered_model_version))
        for tag, value in {"candidate": bundle.name, **bundle.lineage, "bundle_key": key}.items():
            client.set_model_version_tag(mv.name, mv.version, tag, value)
        new = True
    else:
        new = False
    client.set_registered_model_alias(mv.name, CHALLENGER, mv.version)
    if promote:
        replaced = current_champion(mv.name)
        if replaced is not None and replaced.version != mv.version:
            client.set_registered_model_tag(mv.name, PREVIOUS_CHAMPION, str(replaced.version))
        client.set_registered_model_alias(mv.name, CHAMPION, mv.version)
    return client.get_model_version(mv.name, mv.version), new


def champion_baseline(cfg: PipelineConfig, challenger: CandidateOutcome,
                      dataset: Dataset) -> tuple[dict[str, float] | None, pd.DataFrame | None, str]:
    """The current champion's metrics and per-question scores on this run's evaluation set, and how
    they were obtained (the per-question scores feed the paired significance test)."""
    champion = current_champion(cfg.champion.model_name)
    if champion is None:
        return None, None, "no champion"
    if champion.tags.get("test_set") == challenger.bundle.lineage["test_set"]:
        return champion_run_metrics(champion), champion_run_per_question(champion), \
            "stored metrics (same evaluation set)"
    model = mlflow.pyfunc.load_model(f"models:/{cfg.champion.model_name}@{CHAMPION}")
    report = evaluate_candidate("champion", model.unwrap_python_model().answerer, evaluation_questions(dataset, cfg),
                                dataset.doc_text(), cfg.evaluation, embedding_model_dir(cfg.index), cfg.seed,
                                cfg.data.answer_type, cfg.data.labels)
    return report.metrics, report.per_question, "re-scored on this evaluation set"


@dataclass(frozen=True)
class ChampionStanding:
    """Who is champion once the decision is applied, and its objective on this run's questions."""

    candidate: str
    version: str
    objective: float | None  # None: not scored in this run (there was no challenger to compare it with)
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class Promotion:
    decision: Decision
    champion_scored_on: str  # how the current champion's scores were obtained
    version: ModelVersion | None  # the registered challenger, if there is one
    registered_new: bool = False  # False: an identical version existed and was reused
    standing: ChampionStanding | None = None  # the champion after the decision; None while there is none

    @property
    def registered(self) -> str | None:
        """The model version this promotion registered, or None when it registered nothing new."""
        return self.version.version if self.version is not None and self.registered_new else None


def _standing(cfg: PipelineConfig, decision: Decision, per_question: pd.DataFrame | None) -> ChampionStanding | None:
    """The champion after the decision, with a bootstrap interval of its objective from per-question scores."""
    champion = current_champion(cfg.champion.model_name)
    if champion is None:
        return None
    score = decision.challenger_score if decision.promote else decision.champion_score
    if score is None or math.isnan(score) or per_question is None:
        return ChampionStanding(champion.tags.get("candidate", "?"), champion.version, None)
    values, _ = per_question_scores(per_question, cfg.champion)
    low, high = bootstrap_ci(values.tolist(), cfg.evaluation.bootstrap_samples, cfg.seed,
                             cfg.evaluation.confidence_level)
    return ChampionStanding(champion.tags.get("candidate", "?"), champion.version, score, low, high)


def promote(outcomes: list[CandidateOutcome], dataset: Dataset, cfg: PipelineConfig) -> Promotion:
    """Decide on this run's candidates against the current champion; register the challenger (once: the
    registration is not idempotent, so the stage is never retried) and move the aliases."""
    with exclusive(lock_name("registry", cfg.champion.model_name), cfg.cache_root / ".locks"):
        return _promote(outcomes, dataset, cfg)  # a concurrent run decides after this one, against its result


def _promote(outcomes: list[CandidateOutcome], dataset: Dataset, cfg: PipelineConfig) -> Promotion:
    by_name = {o.report.name: o for o in outcomes}
    metrics = {n: o.report.metrics for n, o in by_name.items()}
    challenger = pick_challenger(metrics, cfg.champion)
    champion_metrics, champion_per_question, scored_on = None, None, "no challenger"
    if challenger is not None:
        champion_metrics, champion_per_question, scored_on = champion_baseline(cfg, by_name[challenger], dataset)
    decision = decide(metrics, cfg.champion, champion_metrics,
                      per_question={n: o.report.per_question for n, o in by_name.items()},
                      champion_per_question=champion_per_question, seed=cfg.seed)
    if decision.challenger is None:
        return Promotion(decision, scored_on, None, standing=_standing(cfg, decision, None))
    version, new = log_and_register(by_name[decision.challenger].bundle, cfg, decision.promote)
    if new or decision.promote:  # the registry page says why the version exists and why it serves
        MlflowClient().update_model_version(version.name, version.version,
                                            description=decision.to_markdown(cfg.champion))
    scores = by_name[decision.challenger].report.per_question if decision.promote else champion_per_question
    return Promotion(decision, scored_on, version, new, _standing(cfg, decision, scores))


def promotion_record(promotion: Promotion, cfg: PipelineConfig) -> RunRecord:
    decision = promotion.decision
    record = RunRecord(tags={"champion_scored_on": promotion.champion_scored_on},
                       metrics={"promoted": float(decision.promote)},
                       texts={"decision.md": decision.to_markdown(cfg.champion)},
                       dicts={"decision.json": asdict(decision)})
    if promotion.version is not None:
        record.tags |= {"challenger": decision.challenger, "model_version": promotion.version.version,
                        "registration": "new version" if promotion.registered_new else "reused an identical version"}
    return record


def pipeline_decision_record(promotion: Promotion, cfg: PipelineConfig) -> RunRecord:
    """The decision on the pipeline's parent run: tags to filter by, the champion after it with its objective
    and interval (what `ragtune history` reads), and the decision (outcome, reasons, significance) as the
    run's description in the MLflow UI."""
    decision, standing = promotion.decision, promotion.standing
    record = RunRecord(tags={"champion_decision": "promoted" if decision.promote else "kept",
                             "challenger": decision.challenger or "none",
                             "mlflow.note.content": decision.to_markdown(cfg.champion)})
    if decision.challenger_score is not None:
        record.metrics["challenger_objective"] = decision.challenger_score
    if decision.champion_score is not None and not math.isnan(decision.champion_score):
        record.metrics["champion_objective"] = decision.champion_score
    if standing is not None:
        record.tags |= {"champion": standing.candidate, "champion_version": standing.version}
        if standing.objective is not None:
            record.metrics |= {"champion_after_objective": standing.objective,
                               "champion_after_objective_ci_low": standing.ci_low,
                               "champion_after_objective_ci_high": standing.ci_high}
    return record
