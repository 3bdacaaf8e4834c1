"""Batched generation with per-question finish times, stop strings and retrieval timing (tiny real model)."""

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tasks.answering import Answerer, FinishClock, cut_at_stop
from tasks.indexing import build_index
from tasks.prompts import clean_answer
from tasks.retrieval import Retriever
from tasks.settings import GenerationConfig, IndexConfig

QUESTIONS = ["When does the Kellsport office open?", "How much does the buoy weigh?", "x", "What?", "Kellsport"]
GEN = GenerationConfig(max_new_tokens=10, batch_size=4)


@pytest.fixture(scope="module")
def answerer(tiny_model_dir) -> Answerer:
    return Answerer(tiny_model_dir, GEN)


def test_cut_at_stop_uses_earliest_stop_string():
    assert cut_at_stop("8 am. Next question: x", ["Question", ". "]) == "8 am"
    assert cut_at_stop("8 am", ["###"]) == "8 am"
    assert cut_at_stop("8 am", []) == "8 am"


def test_finish_clock_records_when_each_row_finishes(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    stop_tokens = tok(" 212 kg", add_special_tokens=False)["input_ids"]
    other = tok(" 8", add_special_tokens=False)["input_ids"][0]
    steps = len(stop_tokens) + 1
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = [stop_tokens + [pad], [eos] + [pad] * (steps - 1), [other] * steps]  # stop string, EOS, runs to the limit
    clock = FinishClock(tok, prompt_length=2, rows=3, eos_ids={eos}, stop=["kg"], max_new_tokens=steps)
    prompt = torch.ones((3, 2), dtype=torch.long)
    done = [clock(torch.cat([prompt, torch.tensor([r[:n] for r in rows])], dim=1), None).tolist()
            for n in range(1, steps + 1)]
    assert done[0] == [False, True, False]
    assert done[-2] == [True, True, False] and done[-1] == [True, True, True]
    assert clock.reasons == ["stop", "eos", "length"]
    assert clock.lengths == [len(stop_tokens), 1, steps]
    assert clock.first_token_at <= clock.finished_at[1] <= clock.finished_at[0] <= clock.finished_at[2]


def test_batched_answers_equal_one_at_a_time_with_per_row_timing(answerer):
    batched = answerer.answer(QUESTIONS)
    single = answerer.answer(QUESTIONS, batch_size=1)
    assert [a.text for a in batched] == [a.text for a in single]  # left padding changes nothing under greedy
    for batch in (batched[:4], batched[4:]):
        share = batch[0].compute_seconds
        assert all(a.compute_seconds == share > 0 for a in batch)
        for a in batch:
            assert 0 < a.ttft_ms <= a.latency_ms <= share * len(batch) * 1000  # within its batch's wall time
            assert 1 <= a.new_tokens <= GEN.max_new_tokens and a.prompt_tokens > 0
            assert a.finish_reason in {"eos", "length"}
            assert (a.finish_reason == "length") == (a.new_tokens == GEN.max_new_tokens)
        by_length = sorted(batch, key=lambda a: a.new_tokens)
        assert [a.latency_ms for a in by_length] == sorted(a.latency_ms for a in by_length)


def test_stop_string_cuts_the_answer_and_ends_its_row_early(tiny_model_dir, answerer):
    plain = answerer.answer(QUESTIONS)
    row, text = next((i, a.text) for i, a in enumerate(plain) if len(a.text) >= 4 and a.new_tokens > 2)
    stop = text[1:3]
    stopped = Answerer(tiny_model_dir, GEN.model_copy(update={"stop": [stop]})).answer(QUESTIONS)
    for before, after in zip(plain, stopped, strict=True):
        assert after.text == clean_answer(cut_at_stop(before.text, [stop]))
        assert (after.finish_reason == "stop") == (stop in before.text)
    assert stopped[row].finish_reason == "stop" and stopped[row].text == text[:text.find(stop)].strip()
    assert stopped[row].new_tokens < plain[row].new_tokens
    batch = stopped[:4] if row < 4 else stopped[4:]
    longer = [a.latency_ms for a in batch if a.new_tokens > stopped[row].new_tokens]
    assert longer and stopped[row].latency_ms < min(longer)  # not charged for the longest row of its batch


def test_retrieval_is_batched_timed_and_part_of_latency(tiny_model_dir, tmp_path):
    docs = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["T4", "Office"],
                         "text": ["The TideWatch T4 buoy weighs 212 kg.", "The Kellsport office opens at 8 am."]})
    cfg = IndexConfig(root=tmp_path / "index", top_k=1)
    retriever = Retriever(build_index(docs, "fp", cfg).path, cfg)
    rag = Answerer(tiny_model_dir, GEN, retriever=retriever, top_k=1).answer(QUESTIONS[:2])
    closed = Answerer(tiny_model_dir, GEN).answer(QUESTIONS[:2])
    assert [a.sources for a in rag] == [["d2"], ["d1"]]
    assert rag[0].retrieval_ms == rag[1].retrieval_ms > 0  # one batched search
    assert all(a.retrieval_ms < a.ttft_ms <= a.latency_ms for a in rag)
    assert all(r.prompt_tokens > c.prompt_tokens for r, c in zip(rag, closed, strict=True))


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError, match="stop strings must be non-empty"):
        GenerationConfig(stop=["\n", ""])
