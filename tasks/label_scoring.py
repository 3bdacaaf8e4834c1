"""Answering label questions by likelihood: the label the model finds most probable, not free text.

For each prompt, every label is scored as the log-probability of its tokens followed by the end
of the answer (EOS, as the training targets end), summed over those tokens. The prompt is
processed once (its KV cache is then copied per label), so scoring L labels costs one prefill
plus one short pass over the labels' tokens after their first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.prompts import answer_token_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: list[str]) -> list[list[int]]:
    """Each label's answer tokens as training encodes them (label text, then EOS)."""
    return [answer_token_ids(tokenizer, label) for label in labels]


def label_scores(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                 labels: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Summed log-probabilities [prompts x labels] of each label after each prompt, and prompt token counts.

    The tokenizer must pad on the left (as Answerer sets it).
    """
    import torch

    conts = label_token_ids(tokenizer, labels)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n_prompts, n_labels = len(prompts), len(labels)
    with torch.inference_mode():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)
        scores = first[:, [c[0] for c in conts]]
        steps = max(len(c) for c in conts) - 1
        if steps > 0:
            cache = out.cache
            cache.reorder_cache(torch.arange(n_prompts, device=model.device).repeat_interleave(n_labels))
            rest = torch.full((n_prompts * n_labels, steps), tokenizer.pad_token_id, dtype=torch.long)
            rest_mask = torch.zeros((n_prompts * n_labels, steps), dtype=torch.long)
            for row in range(n_prompts * n_labels):
                tokens = conts[row % n_labels][:-1]
                rest[row, :len(tokens)] = torch.tensor(tokens)
                rest_mask[row, :len(tokens)] = 1
            rest, rest_mask = rest.to(model.device), rest_mask.to(model.device)
            step_positions = positions[:, -1:].repeat_interleave(n_labels, 0) + 1 + torch.arange(
                steps, device=model.device)
            later = model(input_ids=rest, cache=cache, position_ids=step_positions,
                          attention_mask=torch.cat([mask.repeat_interleave(n_labels, 0), rest_mask], dim=1),
                          use_cache=False).logits.float().log_softmax(-1)
            for row in range(n_prompts * n_labels):
                tokens = conts[row % n_labels]
                for j in range(1, len(tokens)):
                    scores[row // n_labels, row % n_labels] += later[row, j - 1, tokens[j]]
    return scores, mask.sum(dim=1).tolist()
