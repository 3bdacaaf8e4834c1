"""Label answers are chosen by likelihood: the scores equal a plain full-sequence computation."""

import pytest
import torch

from tasks.answering import Answerer
from tasks.label_scoring import label_scores, label_token_ids
from tasks.models import load_causal_lm
from tasks.settings import GenerationConfig

LABELS = ["yes", "no", "maybe"]


def _brute_force(model, tokenizer, prompt: str, label_ids: list[int]) -> float:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + label_ids])
    with torch.inference_mode():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(label_ids))


def test_cached_label_scores_equal_full_sequence_log_probabilities(tiny_model_dir):
    tokenizer, model = load_causal_lm(tiny_model_dir)
    tokenizer.padding_side = "left"
    prompts = ["<|user|>Question: Is the office open at 8 am?<|end|><|assistant|>",
               "<|user|>Does the T4 buoy weigh 212 kg? It is yellow.<|end|><|assistant|>"]  # different lengths
    scores, prompt_tokens = label_scores(model, tokenizer, prompts, LABELS)
    assert scores.shape == (2, 3) and prompt_tokens[0] < prompt_tokens[1]
    for row, prompt in enumerate(prompts):
        for col, ids in enumerate(label_token_ids(tokenizer, LABELS)):
            assert len(ids) >= 2  # label tokens, then the end of the answer
            assert float(scores[row, col]) == pytest.approx(_brute_force(model, tokenizer, prompt, ids), abs=1e-4)


def test_answerer_answers_label_questions_with_a_label(tiny_model_dir):
    answerer = Answerer(tiny_model_dir, GenerationConfig(batch_size=2), answer_type="label", labels=LABELS)
    answers = answerer.answer(["Is the office open at 8 am?", "Does it weigh 212 kg?", "Is it yellow?"])
    assert [a.text in LABELS for a in answers] == [True, True, True]
    assert all(a.finish_reason == "label" and a.new_tokens == 0 and a.latency_ms > 0 for a in answers)


def test_calibration_divides_out_the_labels_probability_after_content_free_inputs(tiny_model_dir):
    from tasks.answering import CONTENT_FREE
    from tasks.prompts import build_messages, render_prompt

    questions = ["Is the office open at 8 am?", "Does it weigh 212 kg?", "Is it yellow?", "Is it closed?"]
    raw = Answerer(tiny_model_dir, GenerationConfig(batch_size=4, label_calibration=False), answer_type="label",
                   labels=LABELS)
    calibrated = Answerer(tiny_model_dir, GenerationConfig(batch_size=4), answer_type="label", labels=LABELS)
    gen = GenerationConfig()
    prompts = [render_prompt(raw.tokenizer, build_messages(q, None, gen)) for q in questions]
    scores, _ = label_scores(raw.model, raw.tokenizer, prompts, LABELS)
    free = [render_prompt(raw.tokenizer, build_messages(text, None, gen)) for text in CONTENT_FREE]
    prior = label_scores(raw.model, raw.tokenizer, free, LABELS)[0].softmax(dim=1).mean(dim=0).log()
    assert [a.text for a in raw.answer(questions)] == [LABELS[i] for i in scores.argmax(dim=1).tolist()]
    assert [a.text for a in calibrated.answer(questions)] == [LABELS[i] for i in (scores - prior).argmax(1).tolist()]
