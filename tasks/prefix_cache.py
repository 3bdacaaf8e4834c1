"""The key/value cache of the prompt text every question shares: the system prompt, the instruction and
the chat template's opening (tasks.prompts), computed once per loaded model and reused by every
one-question request (`ragtune ask`, the served model, the latency pass), so only the passages and the
question are prefilled. Batched answering pads prompts on the left and does not use it.

A prompt reuses the cache only when its own tokens start with exactly the cached ones, so an answer
is computed from the same tokens either way. The cached prefix stops one token short of the first
variable text, because a BPE tokenizer may merge the prefix's last characters with what follows.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from tasks.prompts import build_messages, render_prompt
from tasks.settings import GenerationConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SLOT = "RAGTUNESLOT"  # stands for the variable text (question, passages) while the fixed prefix is rendered


def shared_prefix_ids(tokenizer: PreTrainedTokenizerBase, cfg: GenerationConfig, passages: int | None) -> list[int]:
    """Token ids every prompt of this system starts with (`passages`: how many it retrieves, None = closed book);
    none when the chat template does not carry the user's text verbatim."""
    prompt = render_prompt(tokenizer, build_messages(SLOT, [SLOT] * passages if passages else None, cfg))
    if (start := prompt.find(SLOT)) < 0:
        return []
    return tokenizer(prompt[:start], add_special_tokens=False)["input_ids"][:-1]


class PrefixCache:
    """The shared prefix's key/value cache; `for_prompt` hands out a copy generation may extend."""

    def __init__(self, model: PreTrainedModel, ids: list[int]):
        import torch

        self.ids = ids
        self.cache = None
        if ids:
            with torch.inference_mode():
                self.cache = model(torch.tensor([ids], device=model.device), use_cache=True).cache

    def for_prompt(self, input_ids: torch.Tensor):
        """A copy of the cache for one prompt that starts with the prefix and goes on past it; else None."""
        n = len(self.ids)
        if self.cache is None or input_ids.shape[0] != 1 or input_ids.shape[1] <= n:
            return None
        if input_ids[0, :n].tolist() != self.ids:
            return None
        return copy.deepcopy(self.cache)
