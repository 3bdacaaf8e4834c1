"""Which variant answers a request: the gateway's traffic split, sticky per user."""

from __future__ import annotations

import hashlib
import random
from typing import Literal

Variant = Literal["champion", "challenger"]
SALT = "ragtune-ab"  # a user keeps their variant across restarts and across gateways with the same share


def user_bucket(user_id: str) -> float:
    """A stable number in [0, 1) for a user: the same user always lands in the same place."""
    digest = hashlib.sha256(f"{SALT}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_variant(mode: str, share: float, user_id: str | None, rng: random.Random,
                   challenger_ready: bool) -> tuple[Variant, bool]:
    """The variant whose answer is returned, and whether the challenger also answers in shadow.

    split: users whose bucket is below `share` get the challenger (a request without a user_id draws
    at random); shadow: the champion answers and the challenger shadows every request; off, or no
    challenger loaded: the champion answers alone."""
    if not challenger_ready or mode == "off":
        return "champion", False
    if mode == "shadow":
        return "champion", True
    draw = user_bucket(user_id) if user_id else rng.random()
    return ("challenger" if draw < share else "champion"), False
