"""The one prompt format shared by training, evaluation and serving (same text for every candidate)."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.settings import GenerationConfig


def build_messages(question: str, passages: Sequence[str] | None, cfg: GenerationConfig) -> list[dict[str, str]]:
    """Chat messages: closed-book when `passages` is None, else numbered passages before the question."""
    if passages is None:
        user = f"Question: {question}"
    else:
        numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
        user = f"{cfg.context_instruction}\n\nPassages:\n{numbered}\n\nQuestion: {question}"
    return [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": user}]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """Prompt text up to where the answer starts: the chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    body = "\n\n".join(m["content"] for m in messages)
    return f"{body}\nAnswer:"


def clean_answer(text: str) -> str:
    """The first line of the generation, trimmed: the model is asked for a short span."""
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""
