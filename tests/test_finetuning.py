import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks import finetune_data, finetuning, training
from tasks.answering import Answerer
from tasks.indexing import build_index
from tasks.models import load_causal_lm
from tasks.retrieval import Hit, Retriever
from tasks.settings import FinetuneConfig, GenerationConfig, IndexConfig

GEN = GenerationConfig(max_new_tokens=4, batch_size=2)
QA = pd.DataFrame({
    "qa_id": ["q1", "q2"], "question": ["How heavy is the T4?", "When does Kellsport open?"],
    "answer": [["212 kg"], ["8 am"]], "doc_id": ["d1", "d2"], "split": ["train", "train"],
})
QA6 = pd.DataFrame({
    "qa_id": [f"q{i}" for i in range(6)],
    "question": ["How heavy is the T4?", "When does Kellsport open?", "What does the buoy weigh?",
                 "When does the office open?", "Which buoy weighs 212 kg?", "Where is the office?"],
    "answer": [["212 kg"], ["8 am"], ["212 kg"], ["8 am"], ["TideWatch T4"], ["Kellsport"]],
    "doc_id": ["d1", "d2", "d1", "d2", "d1", "d2"], "split": ["train"] * 6,
})
CPU = training.Runtime("cpu", "float32", 2)
IDX = {"version": "idx"}  # a retriever identity


class Killed(RuntimeError):
    """Stands in for the process dying after a given step."""


def _cfg(tmp_path, **kw) -> FinetuneConfig:
    """The loop's behaviour in float32 on every CPU (bfloat16 training: tests/test_bf16_training.py)."""
    base = {"output_root": tmp_path / "adapters", "batch_size": 2, "learning_rate": 3e-2, "warmup_ratio": 0.0,
            "dtype": "float32",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}}
    return FinetuneConfig.model_validate({**base, **kw})


def _adapter(result: finetuning.FinetuneResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))


def _assert_same_adapter(a: finetuning.FinetuneResult, b: finetuning.FinetuneResult) -> None:
    ta, tb = _adapter(a), _adapter(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def test_labels_cover_only_the_answer(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = finetune_data.Example(prompt="<|user|>Question: x<|end|><|assistant|>", answer="212 kg", has_gold=False)
    ids, labels = finetune_data.encode_example(ex, tok, 128)
    n_prompt = len(tok(ex.prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [finetune_data.IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]).replace(" ", "") == "212kg<|end|>"


def test_collate_pads_to_longest_in_batch():
    batch = finetune_data.collate([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"][1].tolist() == [4, -100, -100]


def test_answer_loss_projects_only_answer_positions_and_matches_masked_lm_loss(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples = [finetune_data.Example("<|user|>Question: When does Kellsport open?<|end|><|assistant|>", "8 am", False),
                finetune_data.Example("<|user|>Question: x<|end|><|assistant|>", "The TideWatch T4 buoy", False)]
    batch = finetune_data.collate([finetune_data.encode_example(e, tok, 128) for e in examples], tok.pad_token_id)
    answer_tokens = sum(len(tok(e.answer + tok.eos_token, add_special_tokens=False)["input_ids"]) for e in examples)
    projected = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: projected.append(args[0].shape))
    with torch.no_grad():
        loss, n = training.answer_loss(model, batch)
    hook.remove()
    assert n == answer_tokens
    assert [tuple(s) for s in projected] == [(answer_tokens, model.config.hidden_size)]
    with torch.no_grad():
        reference = model(**batch).loss  # full-vocabulary causal LM loss, prompt labels at -100
    assert torch.allclose(loss, reference, atol=1e-5)


def test_length_grouped_batches_cover_every_example_once_sorted_within_pools():
    lengths = [random.Random(i).randint(1, 50) for i in range(40)]
    batches = finetune_data.length_grouped_batches(lengths, 4, 2, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(40))
    for b in batches:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = [list(range(s, s + 4)) for s in range(0, 40, 4)]
    assert padded < sum(len(b) * max(lengths[i] for i in b) for b in naive)


def test_training_loss_decreases_and_adapter_is_reused(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, max_steps=30)
    result = finetuning.finetune("closed_book", tiny_model_dir, QA, QA, "fp", cfg, GEN, seed=3, progress=False)
    assert result.steps == 30 and result.device == "cpu" and result.batch_size == 2
    assert result.model_load_seconds > 0 and result.train_tokens > 0
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
    examples = finetune_data.build_examples(qa, "raft", tok, GEN, cfg, small_retriever, seed=0)
    with_gold = [e for e in examples if "212 kg" in e.prompt]
    assert len(with_gold) == sum(e.has_gold for e in examples)
    assert abs(len(with_gold) / len(examples) - p) < 0.07


def test_raft_passages_exclude_gold_doc_distractors():
    hits = [Hit("d1#0", "d1", "gold text", 1.0), Hit("d2#0", "d2", "other", 0.9), Hit("d3#0", "d3", "more", 0.8)]
    without = finetune_data.raft_passages(hits, "gold text", "d1", 2, False, random.Random(0))
    assert sorted(without) == ["more", "other"]
    with_gold = finetune_data.raft_passages(hits, "gold text", "d1", 2, True, random.Random(0))
    assert "gold text" in with_gold and len(with_gold) == 2


def test_eval_loss_and_perplexity_after_every_epoch(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, epochs=3)
    result = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp", cfg, GEN, seed=3, progress=False)
    assert result.steps == 9 and result.eval_steps == [3, 6, 9]
    assert result.eval_loss == min(result.eval_losses)
    assert result.perplexity == pytest.approx(math.exp(result.eval_loss))


def test_same_config_gives_identical_adapter_weights(tiny_model_dir, tmp_path):
    results = [finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp",
                                   _cfg(tmp_path / run, max_steps=4, lora={"r": 4, "alpha": 8, "dropout": 0.1}),
                                   GEN, seed=5, progress=False)
               for run in ("a", "b")]
    assert results[0].adapter_dir != results[1].adapter_dir
    assert results[0].train_losses == results[1].train_losses
    _assert_same_adapter(*results)
    other_seed = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp",
                                     _cfg(tmp_path / "c", max_steps=4, lora={"r": 4, "alpha": 8, "dropout": 0.1}),
                                     GEN, seed=6, progress=False)
    assert not torch.equal(_adapter(results[0])["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
                           _adapter(other_seed)["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])


def test_killed_run_resumes_from_checkpoint_to_the_same_adapter(tiny_model_dir, tmp_path):
    # 3 batches per epoch, 3 epochs; dropout makes the result depend on the restored RNG state.
    kw = {"epochs": 3, "checkpoint_every_steps": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    uninterrupted = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp", _cfg(tmp_path / "a", **kw),
                                        GEN, seed=7, progress=False)
    cfg = _cfg(tmp_path / "b", **kw)

    def die_after_step_5(state: training.TrainState) -> None:
        if state.step == 5:
            raise Killed

    with pytest.raises(Killed):
        finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp", cfg, GEN, seed=7, progress=False,
                            on_step=die_after_step_5)
    checkpoint_root = next((cfg.output_root / ".checkpoints").iterdir())
    assert [p.name for p in training.checkpoints(checkpoint_root)] == ["step-00000004"]  # mid-epoch 2
    (checkpoint_root / ".tmp-half-written").mkdir()  # a checkpoint write cut short is ignored
    resumed = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA, "fp", cfg, GEN, seed=7, progress=False)
    assert resumed.resumed_from_step == 4 and resumed.steps == uninterrupted.steps == 9
    assert resumed.train_losses == uninterrupted.train_losses
    assert resumed.eval_losses == uninterrupted.eval_losses
    _assert_same_adapter(uninterrupted, resumed)
    assert not (cfg.output_root / ".checkpoints").exists()


def test_early_stopping_stops_and_keeps_the_best_adapter(tiny_model_dir, tmp_path):
    # Held-out answers contradict the training answers: fitting the training set ends up hurting them.
    eval_qa = QA.assign(answer=[["8 am"], ["212 kg"]])
    cfg = _cfg(tmp_path, epochs=12, early_stopping={"patience": 2, "min_delta": 0.0})
    result = finetuning.finetune("closed_book", tiny_model_dir, QA, eval_qa, "fp", cfg, GEN, seed=3, progress=False)
    assert result.stopped_early and result.steps < 12
    best = result.eval_losses.index(min(result.eval_losses))
    assert result.eval_loss == result.eval_losses[best] and result.best_step == result.eval_steps[best]
    assert len(result.eval_losses) == best + 3 and min(result.eval_losses[-2:]) >= result.eval_loss
    tok, model = load_causal_lm(tiny_model_dir, result.adapter_dir)
    eval_enc = [finetune_data.encode_example(e, tok, cfg.max_length)
                for e in finetune_data.build_examples(eval_qa, "closed_book", tok, GEN, cfg, None, seed=4)]
    kept = training.heldout_loss(model, eval_enc, cfg.batch_size, tok.pad_token_id, CPU)
    assert kept == pytest.approx(result.eval_loss, rel=1e-5)
    assert kept < result.eval_losses[-1]


def test_adapter_key_follows_prompts_not_decoding_settings(tiny_model_dir):
    key = finetuning.adapter_key("raft", tiny_model_dir, "fp", IDX, FinetuneConfig(), GEN, 13, CPU)
    decoding = GEN.model_copy(update={"batch_size": 16, "max_new_tokens": 32, "stop": ["###"]})
    assert finetuning.adapter_key("raft", tiny_model_dir, "fp", IDX, FinetuneConfig(), decoding, 13, CPU) == key
    prompt = GEN.model_copy(update={"system_prompt": "Answer in French."})
    assert finetuning.adapter_key("raft", tiny_model_dir, "fp", IDX, FinetuneConfig(), prompt, 13, CPU) != key


def test_only_the_raft_adapter_is_keyed_by_the_raft_settings(tiny_model_dir):
    raft = FinetuneConfig(raft={"top_k": 1})
    for mode, index in (("closed_book", None), ("raft", IDX)):
        same = finetuning.adapter_key(mode, tiny_model_dir, "fp", index, FinetuneConfig(), GEN, 13, CPU) == \
            finetuning.adapter_key(mode, tiny_model_dir, "fp", index, raft, GEN, 13, CPU)
        assert same == (mode == "closed_book")


def test_closed_book_adapter_is_keyed_by_its_train_and_validation_questions_only(tiny_model_dir, tmp_path):
    from tasks.data_loading import Dataset, fingerprint_tables
    from tasks.settings import load_config

    docs = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["Buoy", "Office"],
                         "text": ["The TideWatch T4 buoy weighs 212 kg.", "The Kellsport office opens at 8 am."]})
    qa = pd.DataFrame({"qa_id": ["q1", "q2", "q3"], "answer": [["212 kg"], ["8 am"], ["8 am"]],
                       "question": ["How heavy is the T4 buoy?", "When does the office open?", "Opening time?"],
                       "doc_id": ["d1", "d2", "d2"], "split": ["train", "validation", "test"]})

    def train(documents: pd.DataFrame, questions: pd.DataFrame) -> finetuning.FinetuneResult:
        dataset = Dataset(documents, questions, fingerprint_tables(documents, questions), "toy")
        cfg = load_config("configs/ci.yaml", [f"finetune.output_root={tmp_path}", "finetune.max_steps=1",
                                              "finetune.batch_size=1"])
        return finetuning.train_adapter("closed_book", dataset, cfg, tiny_model_dir, None)

    first = train(docs, qa)
    edited_doc = docs.assign(text=["The TideWatch T4 buoy weighs 215 kg.", docs.at[1, "text"]])
    new_test_question = pd.concat([qa, pd.DataFrame([{"qa_id": "q4", "question": "Is it heavy?",
                                                      "answer": ["yes"], "doc_id": "d1", "split": "test"}])])
    assert not first.reused
    assert train(edited_doc, new_test_question).reused  # it reads neither documents nor test questions
    edited_train = qa.assign(answer=[["215 kg"], ["8 am"], ["8 am"]])
    retrained = train(docs, edited_train)
    assert not retrained.reused and retrained.adapter_dir != first.adapter_dir


def test_adapter_key_names_the_base_weights_not_their_path(tiny_model_dir, tmp_path):
    """Another machine (or working directory) holds the same base model elsewhere: the key must not change."""
    import shutil

    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    key = finetuning.adapter_key("raft", tiny_model_dir, "fp", IDX, FinetuneConfig(), GEN, 13, CPU)
    assert finetuning.adapter_key("raft", str(elsewhere), "fp", IDX, FinetuneConfig(), GEN, 13, CPU) == key
