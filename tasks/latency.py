"""Latency a champion verdict can rest on: a controlled, warm, one-question-at-a-time measurement.

Batched evaluation latencies depend on the batch and on whatever else the machine is doing, so
the latency metrics that the champion policy reads come from a separate pass: one warm-up
question (not counted), then `evaluation.latency_sample` questions answered one at a time, as
`ragtune ask` and the served model answer them. During the pass the CPU time of every other
process is measured (system busy time minus this process's own); above
`evaluation.disturbed_cores` cores the measurement is marked disturbed, and the policy then
reports its latency constraints instead of enforcing them (tasks.champion).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import psutil

from tasks.answering import AnswerSource


@dataclass(frozen=True)
class LatencyMeasurement:
    latencies_ms: list[float]
    ttfts_ms: list[float]
    other_cores: float  # mean CPU cores used by other processes during the pass
    disturbed: bool

    def metrics(self) -> dict[str, float]:
        out = {"latency_p50_ms": float(np.percentile(self.latencies_ms, 50)),
               "latency_p95_ms": float(np.percentile(self.latencies_ms, 95)),
               "latency_sample_size": float(len(self.latencies_ms)),
               "latency_other_cores": self.other_cores, "latency_disturbed": float(self.disturbed)}
        if self.ttfts_ms:
            out |= {"ttft_p50_ms": float(np.percentile(self.ttfts_ms, 50)),
                    "ttft_p95_ms": float(np.percentile(self.ttfts_ms, 95))}
        return out


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _own_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def measure_latency(answerer: AnswerSource, questions: list[str], disturbed_cores: float) -> LatencyMeasurement:
    """Answer `questions` one at a time after a warm-up; their end-to-end latencies and the machine's load."""
    answerer.answer(questions[:1], batch_size=1)
    busy, own, started = _busy_seconds(), _own_seconds(), time.perf_counter()
    answers = [answerer.answer([q], batch_size=1)[0] for q in questions]
    wall = time.perf_counter() - started
    other = max(0.0, (_busy_seconds() - busy) - (_own_seconds() - own)) / max(wall, 1e-9)
    return LatencyMeasurement([a.latency_ms for a in answers], [a.ttft_ms for a in answers if a.ttft_ms is not None],
                              other, other > disturbed_cores)
