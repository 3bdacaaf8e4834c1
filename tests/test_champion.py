import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from tasks import finetuning
from tasks.answering import Answerer
from tasks.champion import decide
from tasks.evaluation import evaluate_candidate
from tasks.models import embedding_model_dir
from tasks.settings import (
    ChampionConfig,
    EvaluationConfig,
    FinetuneConfig,
    GenerationConfig,
    IndexConfig,
    load_config,
)

POLICY = ChampionConfig.model_validate({
    "constraints": {"latency_p95_ms": {"max": 1500}, "hallucination_rate": {"max": 0.3}},
    "objective": {"f1": 1.0, "exact_match": 0.5}, "margin": 0.02, "require_significance": False,
})
CANDIDATES = {
    "base": {"f1": 0.10, "exact_match": 0.0, "latency_p95_ms": 500, "hallucination_rate": 0.1},
    "rag": {"f1": 0.60, "exact_match": 0.4, "latency_p95_ms": 2000, "hallucination_rate": 0.1},
    "hybrid": {"f1": 0.50, "exact_match": 0.3, "latency_p95_ms": 1200, "hallucination_rate": 0.2},
}


def test_constraints_exclude_best_raw_score():
    d = decide(CANDIDATES, POLICY, None)
    assert d.challenger == "hybrid"
    assert d.promote
    assert any("rag is not eligible" in r and "latency_p95_ms" in r for r in d.reasons)


def test_a_disturbed_latency_measurement_is_reported_not_enforced():
    disturbed = {**CANDIDATES, "rag": {**CANDIDATES["rag"], "latency_disturbed": 1.0, "latency_other_cores": 1.7}}
    d = decide(disturbed, POLICY, None)
    assert d.challenger == "rag" and d.violations["rag"] == []
    assert d.not_enforced == {"rag": ["latency_p95_ms=2000 > 1500.0 (other processes used 1.7 cores)"]}
    assert any("rag: latency measured while the machine was busy, so not enforced" in r for r in d.reasons)
    assert "not enforced (disturbed measurement): latency_p95_ms=2000" in d.to_markdown(POLICY)
    quality = {**disturbed, "rag": {**disturbed["rag"], "hallucination_rate": 0.5}}  # quality bounds still hold
    assert decide(quality, POLICY, None).challenger == "hybrid"


def test_champion_kept_within_margin():
    champion = {"f1": 0.64, "exact_match": 0.0}  # objective 0.64 vs challenger 0.65: gain 0.01 < 0.02
    d = decide(CANDIDATES, POLICY, champion)
    assert d.challenger == "hybrid" and not d.promote
    assert "the champion stays" in d.reasons[-1]


def test_champion_replaced_beyond_margin():
    d = decide(CANDIDATES, POLICY, {"f1": 0.3, "exact_match": 0.1})
    assert d.promote


def test_nothing_eligible_promotes_nothing():
    d = decide({"x": {"f1": 1.0, "exact_match": 1.0, "latency_p95_ms": 9e9, "hallucination_rate": 0}}, POLICY, None)
    assert d.challenger is None and not d.promote


def test_missing_metric_is_a_violation():
    d = decide({"x": {"f1": 1.0, "exact_match": 1.0}}, POLICY, None)
    assert d.challenger is None
    assert "latency_p95_ms missing" in d.violations["x"][0]


def test_markdown_states_outcome():
    text = decide(CANDIDATES, POLICY, None).to_markdown(POLICY)
    assert "promote hybrid" in text and "| rag |" in text


def _scored(f1s: list[float], ids: list[str] | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Summary metrics and the per-question table of a candidate whose EM equals its F1 per question."""
    table = pd.DataFrame({"qa_id": ids or [f"q{i}" for i in range(len(f1s))], "f1": f1s, "exact_match": f1s})
    metrics = {"f1": table["f1"].mean(), "exact_match": table["exact_match"].mean(), "latency_p95_ms": 500,
               "hallucination_rate": 0.1}
    return metrics, table


def test_significant_gain_is_stated_in_decision_and_markdown():
    challenger, challenger_table = _scored([1.0] * 15 + [0.0] * 5)
    champion, champion_table = _scored([0.0] * 18 + [1.0] * 2)
    d = decide({"hybrid": challenger}, POLICY, champion, per_question={"hybrid": challenger_table},
               champion_per_question=champion_table, seed=0)
    assert d.promote and d.significance_metric == "objective"
    assert d.significance.n == 20 and d.significance.mean_difference == pytest.approx(1.5 * 0.65)
    assert d.significance.significant and d.significance.p_value < POLICY.significance_level
    text = d.to_markdown(POLICY)
    assert "## Challenger vs champion" in text and "20 shared questions" in text
    assert ": significant at level 0.05" in text


def test_gain_beyond_margin_that_is_not_significant_is_flagged_and_can_block_promotion():
    challenger, challenger_table = _scored([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    champion, champion_table = _scored([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    args = ({"hybrid": challenger},)
    kwargs = {"per_question": {"hybrid": challenger_table}, "champion_per_question": champion_table, "seed": 0}
    reported = decide(*args, POLICY, champion, **kwargs)
    assert reported.promote and not reported.significance.significant
    assert "not significant at level 0.05" in reported.to_markdown(POLICY)
    strict = POLICY.model_copy(update={"require_significance": True})
    blocked = decide(*args, strict, champion, **kwargs)
    assert not blocked.promote
    assert "requires a significant gain" in blocked.reasons[-1] and "the champion stays" in blocked.reasons[-1]


def test_significance_not_tested_without_champion_per_question_scores():
    challenger, challenger_table = _scored([1.0] * 5)
    d = decide({"hybrid": challenger}, POLICY, {"f1": 0.0, "exact_match": 0.0},
               per_question={"hybrid": challenger_table})
    assert d.promote and d.significance is None
    assert d.significance_note.startswith("not tested") and f"- {d.significance_note}" in d.to_markdown(POLICY)


def test_pairs_only_shared_questions_and_falls_back_to_f1():
    policy = POLICY.model_copy(update={"objective": {"f1": 1.0, "latency_p95_ms": -1e-4}})
    challenger, challenger_table = _scored([1.0, 1.0, 1.0, 0.0], ids=["a", "b", "c", "d"])
    champion, champion_table = _scored([0.0, 1.0, 1.0], ids=["b", "c", "e"])
    d = decide({"hybrid": challenger}, policy, champion, per_question={"hybrid": challenger_table},
               champion_per_question=champion_table, seed=0)
    assert d.significance_metric == "f1"  # latency has no per-question column
    assert d.significance.n == 2 and d.significance.mean_difference == pytest.approx(0.5)


SOUND_QA = pd.DataFrame({
    "qa_id": ["q1", "q2", "q3", "q4"],
    "question": ["How heavy is the T4?", "When does Kellsport open?", "Which buoy weighs 212 kg?",
                 "When does the office open?"],
    "answer": [["212 kg"], ["8 am"], ["TideWatch T4"], ["8 am"]], "doc_id": ["d1", "d2", "d1", "d2"],
    "split": ["train"] * 4,
})
SOUND_DOCS = {"d1": "The TideWatch T4 buoy weighs 212 kg.", "d2": "The Kellsport office opens at 8 am."}


def _garbage_adapter(adapter_dir: str, target: Path) -> Path:
    """A copy of a LoRA adapter whose weights are replaced by large random values."""
    shutil.copytree(adapter_dir, target)
    weights = target / "adapter_model.safetensors"
    rng = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=rng) * 3 for k, v in load_file(str(weights)).items()}, str(weights))
    return target


def test_broken_challenger_is_not_promoted_over_a_sound_champion(tiny_model_dir, tmp_path):
    gen = GenerationConfig(max_new_tokens=6, batch_size=4)
    ft_cfg = FinetuneConfig.model_validate({
        "output_root": tmp_path / "adapters", "batch_size": 4, "learning_rate": 3e-2, "warmup_ratio": 0.0,
        "max_steps": 40, "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}})
    # The sound champion: the tiny model with an adapter trained on these questions (it answers them).
    sound = finetuning.finetune("closed_book", tiny_model_dir, SOUND_QA, SOUND_QA, "fp", ft_cfg, gen, seed=3,
                                progress=False)
    broken = _garbage_adapter(sound.adapter_dir, tmp_path / "garbage")
    eval_cfg = EvaluationConfig(ragas=False, bootstrap_samples=100)
    reports = {name: evaluate_candidate(name, Answerer(tiny_model_dir, gen, adapter_dir=adapter), SOUND_QA,
                                        SOUND_DOCS, eval_cfg, embedding_model_dir(IndexConfig()), seed=0)
               for name, adapter in (("champion", sound.adapter_dir), ("finetuned", broken))}
    champion, challenger = reports["champion"], reports["finetuned"]
    assert champion.metrics["f1"] == 1.0 and challenger.metrics["f1"] < 0.5
    args = ({"finetuned": challenger.metrics},)
    kwargs = {"per_question": {"finetuned": challenger.per_question},
              "champion_per_question": champion.per_question, "seed": 0}

    policy = load_config("configs/default.yaml").champion  # constraints include hallucination_rate <= 0.5
    d = decide(*args, policy, champion.metrics, **kwargs)
    assert not d.promote and d.challenger is None
    assert "finetuned is not eligible: hallucination_rate=" in d.reasons[0]
    assert d.reasons[-1] == "no candidate meets the constraints: nothing is promoted"

    unconstrained = policy.model_copy(update={"constraints": {}})
    d = decide(*args, unconstrained, champion.metrics, **kwargs)
    assert d.challenger == "finetuned" and not d.promote
    assert "does not beat the champion" in d.reasons[-1] and "the champion stays" in d.reasons[-1]
    assert d.significance.mean_difference < 0 and not d.significance.significant
    assert "promote" not in d.to_markdown(unconstrained).split("\n")[2]
