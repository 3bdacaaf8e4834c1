"""The registered model: everything a candidate needs to answer, as data, and the installed code that serves it.

Artifacts: the pipeline config (YAML), the candidate description (JSON), the LoRA adapter
(if the candidate has one) and the FAISS index version (if it retrieves). The base model is
resolved from the config's offline source (converted once into the model cache). The `rag`
candidate generates through `generation.endpoint` when the config sets one, as in evaluation.
`build_answerer` turns those artifacts into the candidate's answerer with this installed package's code:
tasks.registry calls it for ragtune's own loading, and RagtuneModel (logged as models-from-code through
tasks.serving_model, no pickle) for `mlflow models serve`.
Input: a DataFrame (or dict) with a `question` column. Output: answer, sources, latency_ms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pyfunc
import pandas as pd

from tasks.offline import enable_offline_mode

if TYPE_CHECKING:
    from tasks.answering import AnswerSource


CONFIG_ARTIFACT, CANDIDATE_ARTIFACT, ADAPTER_ARTIFACT, INDEX_ARTIFACT = "config", "candidate", "adapter", "index"
ARTIFACTS = (CONFIG_ARTIFACT, CANDIDATE_ARTIFACT, ADAPTER_ARTIFACT, INDEX_ARTIFACT)


# Settings that versions registered before they existed were evaluated with (today's defaults differ).
LEGACY_DEFAULTS = {("index", "retrieval"): "index.retrieval.mode=dense",
                   ("generation", "dtype"): "generation.dtype=float32"}


def legacy_overrides(config_path: Path) -> list[str]:
    """Overrides that make an older registered config answer as it was evaluated."""
    import yaml

    raw = yaml.safe_load(config_path.read_text()) or {}
    return [override for (section, key), override in LEGACY_DEFAULTS.items()
            if key not in (raw.get(section) or {})]


def build_answerer(artifacts: Mapping[str, str]) -> tuple[dict[str, str], AnswerSource]:
    """The candidate's description and its answerer, built from a registered version's artifacts
    (name -> local path) by this installed package."""
    enable_offline_mode()
    from tasks import candidates
    from tasks.answering import answerer_for
    from tasks.models import resolve_model_dir
    from tasks.retrieval import Retriever
    from tasks.settings import load_config

    cfg = load_config(artifacts[CONFIG_ARTIFACT], legacy_overrides(Path(artifacts[CONFIG_ARTIFACT])))
    candidate = json.loads(Path(artifacts[CANDIDATE_ARTIFACT]).read_text())
    retriever = Retriever(Path(artifacts[INDEX_ARTIFACT]), cfg.index) if INDEX_ARTIFACT in artifacts else None
    answerer = answerer_for(candidates.get(candidate["name"]), cfg, resolve_model_dir(cfg.base_model, cfg.model_cache),
                            artifacts.get(ADAPTER_ARTIFACT), retriever)
    return candidate, answerer


class RagtuneModel(mlflow.pyfunc.PythonModel):
    """Answers questions with one candidate system (tasks.candidates)."""

    def load_context(self, context) -> None:
        self.candidate, self.answerer = build_answerer(context.artifacts)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame({"question": [model_input["question"]]}
                                       if isinstance(model_input["question"], str) else model_input)
        if "question" not in model_input:
            raise ValueError("input needs a 'question' column")
        answers = self.answerer.answer([str(q) for q in model_input["question"]])
        return pd.DataFrame({
            "answer": [a.text for a in answers],
            "sources": [json.dumps(a.sources) for a in answers],
            "latency_ms": [a.latency_ms for a in answers],
        })
