import random

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tasks import finetuning
from tasks.answering import Answerer
from tasks.indexing import Hit, Retriever, build_index
from tasks.settings import FinetuneConfig, GenerationConfig, IndexConfig

GEN = GenerationConfig(max_new_tokens=4, batch_size=2)
QA = pd.DataFrame({
    "qa_id": ["q1", "q2"], "question": ["How heavy is the T4?", "When does Kellsport open?"],
    "answer": [["212 kg"], ["8 am"]], "doc_id": ["d1", "d2"], "split": ["train", "train"],
})


def _cfg(tmp_path, **kw) -> FinetuneConfig:
    base = {"output_root": tmp_path / "adapters", "batch_size": 2, "learning_rate": 3e-2, "warmup_ratio": 0.0,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}}
    return FinetuneConfig.model_validate({**base, **kw})


def test_labels_cover_only_the_answer(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = finetuning.Example(prompt="<|user|>Question: x<|end|><|assistant|>", answer="212 kg", has_gold=False)
    ids, labels = finetuning.encode_example(ex, tok, 128)
    n_prompt = len(tok(ex.prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [finetuning.IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]).replace(" ", "") == "212kg<|end|>"


def test_collate_pads_to_longest_in_batch():
    batch = finetuning.collate([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"][1].tolist() == [4, -100, -100]


def test_training_loss_decreases_and_adapter_is_reused(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, max_steps=30)
    result = finetuning.finetune("closed_book", tiny_model_dir, QA, QA, "fp", cfg, GEN, seed=3, progress=False)
    assert result.steps == 30
    assert sum(result.train_losses[-5:]) / 5 < 0.7 * sum(result.train_losses[:5]) / 5
    assert result.eval_loss < result.train_losses[0]
    again = finetuning.finetune("closed_book", tiny_model_dir, QA, QA, "fp", cfg, GEN, seed=3, progress=False)
    assert again.reused and again.adapter_dir == result.adapter_dir
    answers = Answerer(tiny_model_dir, GEN, adapter_dir=result.adapter_dir).answer(QA["question"].tolist())
    assert len(answers) == 2 and all(a.new_tokens <= GEN.max_new_tokens for a in answers)


@pytest.fixture(scope="module")
def small_retriever(tmp_path_factory) -> Retriever:
    docs = pd.DataFrame({"doc_id": ["d1", "d2", "d3"], "title": ["T4", "Office", "Warranty"],
                         "text": ["The T4 weighs 212 kg.", "Kellsport opens at 8 am.", "Warranty: 36 months."]})
    cfg = IndexConfig(root=tmp_path_factory.mktemp("index"), top_k=2)
    return Retriever(build_index(docs, "fp", cfg).path, cfg)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_raft_examples_hold_gold_at_configured_rate(tiny_model_dir, small_retriever, tmp_path, p):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    qa = pd.concat([QA.iloc[:1]] * 400, ignore_index=True)
    cfg = _cfg(tmp_path, raft={"top_k": 2, "gold_probability": p})
    examples = finetuning.build_examples(qa, "raft", tok, GEN, cfg, small_retriever, seed=0)
    with_gold = [e for e in examples if "212 kg" in e.prompt]
    assert len(with_gold) == sum(e.has_gold for e in examples)
    assert abs(len(with_gold) / len(examples) - p) < 0.07


def test_raft_passages_exclude_gold_doc_distractors():
    hits = [Hit("d1#0", "d1", "gold text", 1.0), Hit("d2#0", "d2", "other", 0.9), Hit("d3#0", "d3", "more", 0.8)]
    without = finetuning.raft_passages(hits, "gold text", "d1", 2, False, random.Random(0))
    assert sorted(without) == ["more", "other"]
    with_gold = finetuning.raft_passages(hits, "gold text", "d1", 2, True, random.Random(0))
    assert "gold text" in with_gold and len(with_gold) == 2
