"""Answer types: inferred from the data with a reason, and everything that follows from one place."""

import pandas as pd
import pytest

from tasks import answer_types
from tasks.settings import AnswerInferenceConfig, load_config

DOCS = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["Buoy", "Office"],
                     "text": ["The TideWatch T4 buoy weighs 212 kg and is painted yellow so ships can see it.",
                              "The Kellsport office opens at 8 am on weekdays and is closed at weekends."]})


def _qa(answers: list[str], splits: list[str] | None = None) -> pd.DataFrame:
    n = len(answers)
    return pd.DataFrame({"qa_id": [f"q{i}" for i in range(n)], "question": [f"Question {i}?" for i in range(n)],
                         "answer": [[a] for a in answers], "doc_id": ["d1" if i % 2 == 0 else "d2" for i in range(n)],
                         "split": splits or ["train"] * n})


def test_short_verbatim_answers_are_spans():
    qa = _qa(["212 kg", "8 am", "yellow", "weekends"] * 3)
    kind, reason = answer_types.infer(answer_types.profile(qa, DOCS), AnswerInferenceConfig())
    assert kind == "span" and "100% of answers occur verbatim" in reason


def test_few_distinct_answers_are_labels_most_frequent_first():
    qa = _qa(["yes", "no", "Yes", "maybe", "no", "yes"] * 5)
    kind, reason = answer_types.infer(answer_types.profile(qa, DOCS), AnswerInferenceConfig())
    assert kind == "label" and reason.startswith("3 distinct answers over 30 rows")
    assert answer_types.labels_of(qa) == ["yes", "no", "maybe"]


def test_long_answers_are_free_form_even_when_extractive():
    long = ["The TideWatch T4 buoy weighs 212 kg and is painted yellow so ships can see it.",
            "The Kellsport office opens at 8 am on weekdays and is closed at weekends."]
    qa = _qa(long * 6)
    kind, reason = answer_types.infer(answer_types.profile(qa, DOCS), AnswerInferenceConfig())
    assert kind == "free_form" and "100% of answers occur verbatim" in reason and "median answer has 15 words" in reason
    assert reason.endswith("not labels: 2 distinct answers of up to 15 words")


def test_canonical_label_matches_normalised_text_and_a_leading_label():
    labels = ["yes", "no", "maybe"]
    assert answer_types.canonical_label(" Yes.", labels) == "yes"
    assert answer_types.canonical_label("No, it is closed at weekends.", labels) == "no"
    assert answer_types.canonical_label("It depends", labels) is None


def test_resolve_fills_only_what_the_config_leaves_unset():
    qa = _qa(["yes", "no", "maybe"] * 6)
    cfg = load_config("configs/ci.yaml", ["generation.system_prompt=Say yes or no."])
    resolved, settings = answer_types.resolve(cfg, qa, DOCS, lambda texts: [1] * len(texts))
    assert settings.answer_type == "label" and not settings.declared
    assert resolved.data.answer_type == "label" and resolved.data.labels == ["maybe", "no", "yes"]
    assert resolved.generation.system_prompt == "Say yes or no."  # set by the user: kept
    assert resolved.generation.context_instruction == answer_types.DEFAULTS["label"].context_instruction
    assert resolved.champion.objective == {"f1": 1.0}  # ci.yaml sets it
    assert resolved.validation.answer_chars == (1, 100)
    assert "validation.answer_chars" in settings.filled and "champion.objective" not in settings.filled


def test_span_data_keeps_todays_settings():
    qa = _qa(["212 kg", "8 am"] * 4)
    cfg = load_config("configs/default.yaml")
    resolved, settings = answer_types.resolve(cfg, qa, DOCS, lambda texts: pytest.fail("no sizing for spans"))
    assert settings.answer_type == "span"
    assert resolved.generation == cfg.generation and resolved.validation == cfg.validation
    assert resolved.champion == cfg.champion


def test_free_form_max_new_tokens_is_sized_from_training_answers():
    answers = [" ".join(["word"] * n) for n in (10, 20, 30, 40, 200)]
    qa = _qa(answers, ["train", "train", "train", "train", "test"])
    cfg = load_config("configs/ci_free_form.yaml",
                      ["data.answer_type=free_form", "generation.free_form_sizing.cap=256"])
    resolved, settings = answer_types.resolve(cfg, qa, DOCS, lambda texts: [len(t.split()) for t in texts])
    assert settings.declared and settings.reason == "declared in data.answer_type"
    # 95th percentile of the train answers (38.5 tokens) x 1.25, the test answer not looked at
    assert resolved.generation.max_new_tokens == 49
    assert resolved.champion.objective == {"rouge": 0.5, "semantic_similarity": 0.5}
    assert resolved.generation.system_prompt == answer_types.DEFAULTS["free_form"].system_prompt
