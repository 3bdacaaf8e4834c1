"""Keeping user text from turning into a model's control tokens (role-token injection).

A tokenizer turns the text of each special token it knows (SmolLM2: `<|im_start|>`, `<|im_end|>`,
`<|endoftext|>`; Gemma: `<start_of_turn>`, `<end_of_turn>`, `<bos>`, `<eos>`) into that token wherever
the text occurs in a string it encodes. A prompt is rendered to one string, the chat template's own role
tokens included, and encoded whole; so a document holding `<|im_end|>\\n<|im_start|>system ...` would open
a real system turn, in evaluation, in serving and in the training data.

The defence is to neutralise user text before it enters the template: after the first character of
every occurrence of a control string, insert a WORD JOINER (U+2060: invisible, no meaning). No control
string contains the joiner, and every position where one started now has the joiner after its first
character, so none survives, overlapping ones included. It is chosen over encoding user text with
special-token splitting off (`split_special_tokens=True`) because:
- prompts stay plain strings: the chat template, batched left-padded generation, label scoring and the
  training encoder use them as before, where splitting would need every template rendered and encoded
  piece by piece, per model family;
- it sits in two functions every local prompt and every answer target goes through
  (tasks.prompts.render_prompt and tasks.prompts.answer_token_ids);
- text holding no control string is returned unchanged, so prompts of normal data (and the evaluation
  caches and adapters keyed on them) stay byte-identical;
- the text still reads the same when decoded.
A control string of a single character cannot be split this way; no tokenizer we know of has one.
A control string could only straddle user text and template text if it contained the template's own
separators (`\\n`, `<|im_end|>`, `[1] `, `Question: `), which none of them do.
Messages sent to an OpenAI-compatible endpoint are not neutralised here: its server renders and encodes
them with a tokenizer this code does not know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WORD_JOINER = "\u2060"


def control_strings(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """The strings the tokenizer encodes as control tokens: its special tokens and its added tokens marked special.

    Added tokens not marked special are ordinary vocabulary (whitespace runs, markup) and stay as they are.
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    found = set(getattr(tokenizer, "all_special_tokens", ())) | {t.content for t in added if t.special}
    return frozenset(s for s in found if len(s) > 1)


@lru_cache(maxsize=16)
def _starts(controls: frozenset[str]) -> re.Pattern[str]:
    """Matches the first character of every occurrence of any control string (a lookahead, so overlaps count)."""
    alternatives = "|".join(re.escape(s) for s in sorted(controls, key=len, reverse=True))
    return re.compile(f"(?=(?:{alternatives}))(.)", re.DOTALL)


def neutralize(text: str, controls: Iterable[str]) -> str:
    """`text` with a word joiner after the first character of every control string in it; unchanged without one."""
    controls = frozenset(controls)
    if not controls:
        return text
    return _starts(controls).sub(lambda m: m.group(1) + WORD_JOINER, text)
