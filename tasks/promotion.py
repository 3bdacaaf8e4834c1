"""Promote stage: apply the champion policy (tasks.champion) to this run's candidates, log the
challenger as a models-from-code pyfunc (tasks.serving_model: no pickle), register it, and move the aliases.

The current champion is compared on this run's evaluation set: with its stored scores when it was
evaluated on the same set, else re-scored through its registered model on today's questions (loaded by
tasks.registry, which refuses a version it cannot trust: then nothing is promoted).
Every run's challenger is registered and gets the alias `challenger`; `champion` moves to it
only when the policy's decision says so. Version tags carry the lineage and are written in the call that
creates the version, so no version ever exists untagged.

Deciding (and re-scoring) happens outside the registry lock; applying is a compare-and-set under it: the
champion is read again, and when another run moved it meanwhile the decision is taken again against the new
champion's recorded scores on the same evaluation set, or nothing is promoted when it has none. A worse
challenger never replaces a better champion, whichever run finishes last.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from tasks.candidates import CandidateBundle
from tasks.champion import Decision, decide, objective, per_question_scores, pick_challenger
from tasks.data_loading import Dataset
from tasks.errors import RegistryError
from tasks.evaluation import CandidateOutcome, evaluate_candidate, evaluation_questions
from tasks.exclusive import exclusive, lock_name
from tasks.metrics import bootstrap_ci
from tasks.models import embedding_model_dir
from tasks.records import RunRecord
from tasks.registry import PREVIOUS_CHAMPION, load_version, remove_interrupted
from tasks.serving import ADAPTER_ARTIFACT, CANDIDATE_ARTIFACT, CONFIG_ARTIFACT, INDEX_ARTIFACT
from tasks.settings import PipelineConfig, config_to_yaml

CHAMPION, CHALLENGER = "champion", "challenger"
SERVING_CODE = Path(__file__).with_name("serving_model.py")  # what MLflow logs as the model (models-from-code)
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


def _log_and_create(bundle: CandidateBundle, name: str, serving_yaml: str, key: str) -> ModelVersion:
    """Log the bundle in the active run and create its version with the lineage tags in the same call."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path, candidate_path = Path(tmp) / "config.yaml", Path(tmp) / "candidate.json"
        config_path.write_text(serving_yaml)
        candidate_path.write_text(json.dumps({"name": bundle.name, **bundle.lineage}, indent=2))
        artifacts = {CONFIG_ARTIFACT: str(config_path), CANDIDATE_ARTIFACT: str(candidate_path)}
        if bundle.adapter_dir:
            artifacts[ADAPTER_ARTIFACT] = bundle.adapter_dir
        if bundle.index_dir:
            artifacts[INDEX_ARTIFACT] = bundle.index_dir
        info = mlflow.pyfunc.log_model(name="model", python_model=str(SERVING_CODE), artifacts=artifacts,
                                       pip_requirements=_requirements(), signature=SIGNATURE)
    return mlflow.register_model(info.model_uri, name, tags={"candidate": bundle.name, **bundle.lineage,
                                                             "bundle_key": key})


def log_and_register(bundle: CandidateBundle, cfg: PipelineConfig, promote: bool) -> tuple[ModelVersion, bool]:
    """Register the bundle as a pyfunc logged in the active run, unless a version serving exactly the same
    thing exists (then that one is reused: a run with nothing changed registers nothing, and the stage is
    safe to repeat); set `challenger` (and `champion` when `promote`, unconditionally: the pipeline decides
    through `promote`). Call it holding the registry lock. Returns the version and whether it is new."""
    serving_cfg = cfg.model_copy(update={"model_cache": Path(cfg.model_cache).resolve()})
    serving_yaml = config_to_yaml(serving_cfg)
    key = bundle_key(bundle, serving_yaml)
    client = MlflowClient()
    mv = _registered(cfg.champion.model_name, key)
    new = mv is None
    if new:
        mv = _log_and_create(bundle, cfg.champion.model_name, serving_yaml, key)
    client.set_registered_model_alias(mv.name, CHALLENGER, mv.version)
    if promote:
        replaced = current_champion(mv.name)
        if replaced is not None and replaced.version != mv.version:
            client.set_registered_model_tag(mv.name, PREVIOUS_CHAMPION, str(replaced.version))
        client.set_registered_model_alias(mv.name, CHAMPION, mv.version)
    return client.get_model_version(mv.name, mv.version), new


@dataclass(frozen=True)
class Baseline:
    """The champion a run compares its challenger with, as the run read it (outside the registry lock)."""

    version: str | None  # None: there was no champion
    metrics: dict[str, float] | None
    per_question: pd.DataFrame | None
    scored_on: str  # how its scores were obtained
    refused: str | None = None  # why it could not be scored: then nothing is promoted


def champion_baseline(cfg: PipelineConfig, challenger: CandidateOutcome, dataset: Dataset) -> Baseline:
    """The current champion's metrics and per-question scores on this run's evaluation set, and how
    they were obtained (the per-question scores feed the paired significance test)."""
    champion = current_champion(cfg.champion.model_name)
    if champion is None:
        return Baseline(None, None, None, "no champion")
    if champion.tags.get("test_set") == challenger.bundle.lineage["test_set"]:
        return Baseline(str(champion.version), champion_run_metrics(champion), champion_run_per_question(champion),
                        "stored metrics (same evaluation set)")
    try:
        loaded = load_version(cfg.champion.model_name, version=champion.version)
    except RegistryError as err:
        return Baseline(str(champion.version), None, None, "not re-scored: refused by the registry checks", str(err))
    report = evaluate_candidate("champion", loaded.answerer, evaluation_questions(dataset, cfg),
                                dataset.doc_text(), cfg.evaluation, embedding_model_dir(cfg.index), cfg.seed,
                                cfg.data.answer_type, cfg.data.labels)
    return Baseline(str(champion.version), report.metrics, report.per_question, "re-scored on this evaluation set")


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


def _inputs(outcomes: list[CandidateOutcome]) -> tuple[dict[str, dict[str, float]], dict[str, pd.DataFrame]]:
    return ({o.report.name: o.report.metrics for o in outcomes},
            {o.report.name: o.report.per_question for o in outcomes})


def _outcome(outcomes: list[CandidateOutcome], name: str) -> CandidateOutcome:
    return next(o for o in outcomes if o.report.name == name)


def decide_promotion(outcomes: list[CandidateOutcome], dataset: Dataset,
                     cfg: PipelineConfig) -> tuple[Decision, Baseline]:
    """The policy's decision on this run's candidates against the champion as it is now (no lock: re-scoring
    the champion may take minutes, and apply_promotion checks that the champion is still the same)."""
    metrics, per_question = _inputs(outcomes)
    challenger = pick_challenger(metrics, cfg.champion)
    baseline = Baseline(None, None, None, "no challenger")
    if challenger is not None:
        baseline = champion_baseline(cfg, _outcome(outcomes, challenger), dataset)
    decision = decide(metrics, cfg.champion, baseline.metrics, per_question=per_question,
                      champion_per_question=baseline.per_question, seed=cfg.seed)
    if baseline.refused and decision.promote:  # decide()'s last reason is its verdict: replaced
        decision = replace(decision, promote=False, significance_note="not tested: the champion could not be scored",
                           reasons=[*decision.reasons[:-1], f"the champion (version {baseline.version}) cannot be "
                                    f"compared: {baseline.refused}. Nothing is promoted; the challenger gets the "
                                    "alias `challenger`"])
    return decision, baseline


def recheck(decision: Decision, baseline: Baseline, outcomes: list[CandidateOutcome],
            cfg: PipelineConfig) -> tuple[Decision, pd.DataFrame | None]:
    """The decision against the champion as it is now (call it holding the registry lock), and that champion's
    per-question scores. The decision stands when it keeps the champion or the champion is the one it was
    compared with; else it is taken again with the new champion's recorded scores on the same evaluation set,
    and nothing is promoted when there are none."""
    now = current_champion(cfg.champion.model_name)
    if not decision.promote or now is None or str(now.version) == baseline.version:
        return decision, baseline.per_question
    moved = f"the champion moved from version {baseline.version or 'none'} to {now.version} while this run decided"
    test_set = _outcome(outcomes, decision.challenger).bundle.lineage.get("test_set")
    recorded = champion_run_metrics(now) if test_set is not None and now.tags.get("test_set") == test_set else {}
    if math.isnan(objective(recorded, cfg.champion)):
        return replace(decision, promote=False, reasons=[
            *decision.reasons, f"but {moved}, and version {now.version} has no recorded objective on this "
            "evaluation set to compare with: nothing is promoted; the challenger gets the alias `challenger`"]), None
    metrics, per_question = _inputs(outcomes)
    champion_per_question = champion_run_per_question(now)
    again = decide(metrics, cfg.champion, recorded, per_question=per_question,
                   champion_per_question=champion_per_question, seed=cfg.seed)
    again.reasons.insert(0, f"{moved}: compared again with its recorded scores on the same evaluation set")
    return again, champion_per_question


def apply_promotion(decision: Decision, baseline: Baseline, outcomes: list[CandidateOutcome],
                    cfg: PipelineConfig) -> Promotion:
    """Holding the registry lock: remove interrupted registrations, re-check the decision against the champion
    as it is now, register the challenger (once: the registration is not idempotent, so the stage is never
    retried) and move the aliases."""
    name = cfg.champion.model_name
    with exclusive(lock_name("registry", name), cfg.cache_root / ".locks"):
        remove_interrupted(name)
        if decision.challenger is None:
            return Promotion(decision, baseline.scored_on, None, standing=_standing(cfg, decision, None))
        decision, champion_per_question = recheck(decision, baseline, outcomes, cfg)
        chosen = _outcome(outcomes, decision.challenger)
        version, new = log_and_register(chosen.bundle, cfg, decision.promote)
        if new or decision.promote:  # the registry page says why the version exists and why it serves
            MlflowClient().update_model_version(version.name, version.version,
                                                description=decision.to_markdown(cfg.champion))
        scores = chosen.report.per_question if decision.promote else champion_per_question
        return Promotion(decision, baseline.scored_on, version, new, _standing(cfg, decision, scores))


def promote(outcomes: list[CandidateOutcome], dataset: Dataset, cfg: PipelineConfig) -> Promotion:
    """Decide on this run's candidates against the current champion, then apply the decision as a
    compare-and-set under the registry lock."""
    decision, baseline = decide_promotion(outcomes, dataset, cfg)
    return apply_promotion(decision, baseline, outcomes, cfg)


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
