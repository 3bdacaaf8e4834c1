"""The registered model: an MLflow pyfunc bundling everything a candidate needs to answer.

Artifacts: the pipeline config (YAML), the candidate description (JSON), the LoRA adapter
(if the candidate has one) and the FAISS index version (if it retrieves). The base model is
resolved from the config's offline source (converted once into the model cache). The `rag`
candidate generates through `generation.endpoint` when the config sets one, as in evaluation.
Input: a DataFrame (or dict) with a `question` column. Output: answer, sources, latency_ms.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from tasks.offline import enable_offline_mode

# The explicit signature in tasks.promotion describes the input; MLflow's type-hint nudge is noise here.
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")

CONFIG_ARTIFACT, CANDIDATE_ARTIFACT, ADAPTER_ARTIFACT, INDEX_ARTIFACT = "config", "candidate", "adapter", "index"


class RagtuneModel(mlflow.pyfunc.PythonModel):
    """Answers questions with one candidate system (tasks.candidates)."""

    def load_context(self, context) -> None:
        enable_offline_mode()
        from tasks import candidates
        from tasks.answering import answerer_for
        from tasks.models import resolve_model_dir
        from tasks.retrieval import Retriever
        from tasks.settings import load_config

        cfg = load_config(context.artifacts[CONFIG_ARTIFACT])
        self.candidate = json.loads(Path(context.artifacts[CANDIDATE_ARTIFACT]).read_text())
        self.adapter_dir = context.artifacts.get(ADAPTER_ARTIFACT)
        retriever = None
        if INDEX_ARTIFACT in context.artifacts:
            retriever = Retriever(Path(context.artifacts[INDEX_ARTIFACT]), cfg.index)
        self.answerer = answerer_for(candidates.get(self.candidate["name"]), cfg,
                                     resolve_model_dir(cfg.base_model, cfg.model_cache), self.adapter_dir, retriever)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
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
