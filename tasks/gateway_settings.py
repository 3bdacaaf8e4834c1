"""Configuration of `ragtune gateway` (tasks.gateway): where it listens, how it splits traffic between the
registry's champion and challenger, and how it records requests; part of the pipeline config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.config_base import Strict


class GatewayConfig(Strict):
    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless you mean to expose it.")
    port: int = Field(8800, ge=1, le=65535)
    mode: Literal["off", "split", "shadow"] = Field(
        "split", description="off: the champion answers everyone; split: `challenger_share` of users (sticky per "
        "user_id; per request without one) get the challenger; shadow: the champion answers, the challenger "
        "answers too off the response path, and both are recorded.")
    challenger_share: float = Field(0.1, ge=0, le=1, description="Share of traffic the challenger answers in split.")
    alias_poll_seconds: float = Field(
        5.0, gt=0, description="How often the registry's aliases are checked; a moved alias is loaded beside the "
        "serving model, which answers until the new one is ready.")
    record_queue: int = Field(
        10_000, ge=1, description="Recorded requests waiting to be written; when full, answering waits for the "
        "writer (no record is dropped).")
    outbox_dir: Path = Field(
        Path("artifacts/gateway-outbox"), description="Where answered requests wait until MLflow holds them; a "
        "gateway writes what a killed one left here. One gateway per directory.")
    shutdown_write_seconds: float = Field(
        60.0, ge=0, description="On shutdown, how long to keep writing queued records; the rest stay in the outbox.")
    feedback_wait_seconds: float = Field(
        30.0, ge=0, description="How long feedback waits for its request's record to be written.")
    price_per_hour: float = Field(0.10, ge=0, description="Compute price (USD/hour) for each request's cost.")
