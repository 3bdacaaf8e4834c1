"""The controlled latency measurement: one question at a time after a warm-up, other processes' load recorded."""

import os
import subprocess
import sys

from tasks.answering import Answerer
from tasks.latency import measure_latency
from tasks.settings import GenerationConfig

QUESTIONS = ["When does the Kellsport office open?", "How heavy is the T4 buoy?", "Is it yellow?"]


def test_quiet_machine_gives_an_undisturbed_measurement(tiny_model_dir):
    answerer = Answerer(tiny_model_dir, GenerationConfig(max_new_tokens=4))
    measured = measure_latency(answerer, QUESTIONS, disturbed_cores=1.5)
    metrics = measured.metrics()
    assert metrics["latency_sample_size"] == 3 and 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"]
    assert metrics["ttft_p50_ms"] > 0 and not measured.disturbed


def test_other_processes_using_the_cpus_mark_it_disturbed(tiny_model_dir):
    answerer = Answerer(tiny_model_dir, GenerationConfig(max_new_tokens=4))
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"  # bounded: 20 s at most
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 2)]
    try:
        measured = measure_latency(answerer, QUESTIONS * 3, disturbed_cores=0.5)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert measured.other_cores > 0.5 and measured.disturbed
    assert measured.metrics()["latency_disturbed"] == 1.0
