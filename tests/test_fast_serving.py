"""The fast serving path: the answering dtype (resolved from the CPU's instructions) and the shared-prefix KV
cache that one-question requests reuse (tiny real model)."""

import pytest
import torch
from transformers import AutoTokenizer

from tasks.answering import Answerer
from tasks.config_base import ConfigError
from tasks.cpu_features import cpu_flags, native_bf16
from tasks.prefix_cache import PrefixCache, shared_prefix_ids
from tasks.settings import GenerationConfig, load_config
from tests.test_answering import QUESTIONS

FP32 = GenerationConfig(max_new_tokens=10, batch_size=4, dtype="float32")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse", "avx2", "avx512_bf16"})
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert native_bf16(frozenset({"avx2", "fma"})) is False
    assert native_bf16(frozenset({"avx2", "amx_bf16"})) and native_bf16(frozenset({"avx512_bf16"}))


def test_auto_dtype_resolves_at_load_to_what_the_cpu_multiplies_natively(tmp_path):
    assert GenerationConfig().dtype == ("bfloat16" if native_bf16() else "float32")
    assert GenerationConfig(dtype="float32").dtype == "float32"
    config = tmp_path / "bad.yaml"
    config.write_text("generation: {dtype: float16}\n")
    with pytest.raises(ConfigError, match="generation.dtype"):
        load_config(config)


def test_bfloat16_answerer_holds_bfloat16_weights_and_answers(tiny_model_dir):
    answerer = Answerer(tiny_model_dir, FP32.model_copy(update={"dtype": "bfloat16"}))
    assert {p.dtype for p in answerer.model.parameters()} == {torch.bfloat16}
    answers = answerer.answer(QUESTIONS[:2])
    assert all(a.new_tokens >= 1 and a.ttft_ms > 0 for a in answers)


def test_int8_answerer_quantises_every_linear_layer_per_channel_and_answers_close_to_float32(tiny_model_dir):
    from tasks.int8_linear import Int8Linear

    answerer = Answerer(tiny_model_dir, FP32.model_copy(update={"dtype": "int8"}))
    exact = Answerer(tiny_model_dir, FP32)
    assert not [m for m in answerer.model.modules() if type(m) is torch.nn.Linear]
    quantised = [m for m in answerer.model.modules() if isinstance(m, Int8Linear)]
    assert len(quantised) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output head
    assert {m.weight_int8.dtype for m in quantised} == {torch.int8}
    input_ids = torch.randint(5, answerer.model.config.vocab_size, (2, 9))
    with torch.inference_mode():
        approx, reference = answerer.model(input_ids).logits, exact.model(input_ids).logits
    error = (approx - reference).abs().mean()
    assert 0 < error < 0.1 * reference.abs().mean()  # rounded, not broken
    answers = answerer.answer(QUESTIONS[:2])
    assert all(a.new_tokens >= 1 and a.ttft_ms > 0 for a in answers)
    single = [answerer.answer([q], batch_size=1)[0] for q in QUESTIONS[:2]]  # through the prefix cache
    assert all(a.new_tokens >= 1 for a in single)


def test_int8_linear_quantises_each_token_on_its_own():
    """A token's result does not depend on the other tokens of the batch (one scale per token, not per call),
    and matches float32 to the int8 rounding."""
    from tasks.int8_linear import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = Int8Linear(linear)
    quiet, loud = torch.randn(1, 64), torch.randn(1, 64) * 1000
    alone, beside_outlier = layer(quiet), layer(torch.cat([quiet, loud]))[:1]
    assert torch.equal(alone, beside_outlier)
    exact = linear(quiet)
    assert (alone - exact).abs().max() < 0.02 * exact.abs().max()
    batch = torch.randn(2, 5, 64)
    assert layer(batch).shape == (2, 5, 48) and layer(batch[:, -1:, :]).shape == (2, 1, 48)


@pytest.mark.parametrize("passages", [None, 2])
def test_shared_prefix_is_how_every_prompt_of_the_system_starts(tiny_model_dir, passages):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = shared_prefix_ids(tokenizer, FP32, passages)
    assert len(ids) > 3
    from tasks.prompts import build_messages, render_prompt

    for question in QUESTIONS:
        prompt = render_prompt(tokenizer, build_messages(question, ["x y"] * passages if passages else None, FP32))
        assert tokenizer(prompt, add_special_tokens=False)["input_ids"][:len(ids)] == ids


def test_one_question_reuses_the_prefix_cache_and_answers_as_a_whole_prefill_does(tiny_model_dir):
    cached = Answerer(tiny_model_dir, FP32)
    whole = Answerer(tiny_model_dir, FP32)
    whole._prefix = PrefixCache(whole.model, [])  # no shared tokens: every prompt prefilled whole
    with_cache = [cached.answer([q], batch_size=1)[0] for q in QUESTIONS]
    without = [whole.answer([q], batch_size=1)[0] for q in QUESTIONS]
    assert cached._prefix is not None and len(cached._prefix.ids) > 3
    assert [a.text for a in with_cache] == [a.text for a in without]
    assert [a.new_tokens for a in with_cache] == [a.new_tokens for a in without]
    assert [a.prompt_tokens for a in with_cache] == [a.prompt_tokens for a in without]


def test_prefix_cache_is_handed_out_only_for_one_prompt_that_starts_with_it(tiny_model_dir):
    answerer = Answerer(tiny_model_dir, FP32)
    ids = shared_prefix_ids(answerer.tokenizer, FP32, None)
    cache = PrefixCache(answerer.model, ids)
    prompt = torch.tensor([ids + [5, 6]])
    first, second = cache.for_prompt(prompt), cache.for_prompt(prompt)
    assert first is not None and first is not second and first is not cache.cache  # a copy generation may extend
    assert cache.for_prompt(torch.tensor([ids])) is None  # nothing after the prefix to prefill
    assert cache.for_prompt(torch.tensor([[ids[0] + 1] + ids[1:] + [5]])) is None  # another start
    assert cache.for_prompt(torch.tensor([ids + [5], ids + [6]])) is None  # a batch pads on the left


def test_no_prefix_is_shared_when_the_template_rewrites_the_users_text(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | lower }}\n{% endfor %}"
    assert shared_prefix_ids(tokenizer, FP32, 2) == []


def _batched_head_products(model, input_ids) -> list[list[int]]:
    """Shapes of the batched products and copies of the vocabulary matrix during one prefill."""
    vocab, hidden = model.get_output_embeddings().weight.shape
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        model(input_ids, use_cache=True, logits_to_keep=1)
    return [shape for event in prof.events() if event.name in ("aten::bmm", "aten::copy_")
            for shape in event.input_shapes if len(shape) == 3 and shape[1:] == [hidden, vocab]]


def test_a_prefill_never_copies_the_vocabulary_matrix_even_when_no_weight_needs_a_gradient(tiny_model_dir):
    """A merged adapter's weights need no gradient; torch then multiplied the last positions' strided hidden
    states by the whole output matrix expanded per row, copied in bfloat16 (730 ms instead of 51 for a Gemma 3 270M
    prefill)."""
    model = Answerer(tiny_model_dir, FP32).model
    model.requires_grad_(False)
    input_ids = torch.randint(5, model.config.vocab_size, (2, 9))
    assert _batched_head_products(model, input_ids) == []
    model.get_output_embeddings()._forward_pre_hooks.clear()  # the check has teeth: without the fix, one per row
    assert _batched_head_products(model, input_ids)
