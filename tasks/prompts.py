"""The one prompt format shared by training, evaluation and serving (same text for every candidate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tasks.settings import GenerationConfig
from tasks.special_tokens import control_strings, neutralize

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def build_messages(question: str, passages: Sequence[str] | None, cfg: GenerationConfig) -> list[dict[str, str]]:
    """Chat messages: closed-book when `passages` is None, else numbered passages before the question."""
    if passages is None:
        user = f"Question: {question}"
    else:
        numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
        user = f"{cfg.context_instruction}\n\nPassages:\n{numbered}\n\nQuestion: {question}"
    return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS text when the tokenizer adds BOS by default (prompts are tokenized without special tokens).

    Base models such as Gemma 3 need their BOS (probed: a one-word answer's loss went from 5.7 to 10.3 without).
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None or tokenizer("")["input_ids"][:1] != [bos_id]:
        return ""
    return tokenizer.bos_token


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """Prompt text up to where the answer starts: the chat template if the tokenizer has one.

    Every message but the system prompt (configuration) carries user text (documents, passages, questions), so
    its control-token strings are neutralised first (tasks.special_tokens): only the template's own stay tokens.
    """
    controls = control_strings(tokenizer)
    messages = [m if m["role"] == "system" else {**m, "content": neutralize(m["content"], controls)}
                for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    body = "\n\n".join(m["content"] for m in messages)
    return f"{_bos_prefix(tokenizer)}{body}\nAnswer:"


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """An answer's tokens as the model is trained to produce them and as labels are scored: the answer text
    (control-token strings neutralised, as in prompts) followed by EOS."""
    text = neutralize(answer, control_strings(tokenizer)) + (tokenizer.eos_token or "")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def clean_answer(text: str, answer_type: str = "span") -> str:
    """The answer in a generation: the first line for a span (the model is asked for a short span),
    the whole text for a free-form or label answer; trimmed."""
    text = text.strip()
    if answer_type in ("free_form", "label"):
        return " ".join(text.split())
    return text.splitlines()[0].strip() if text else ""
