"""`make bench-gpu` works end to end: the small configuration, run as the command runs it.

Its figures are not checked against speeds (benchmarks are never timed tests); what is
checked is that every figure comes out as a name=value line and that the measured requests
really went through the engine with a screenshot, as they will on the first GPU machine.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from engine.loading import visual_tokens

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 4


def test_gpu_bench_runs_the_small_configuration_through_the_engine_and_prints_every_figure(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPDESK_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--small", "--tokens", str(TOKENS)],
        cwd=ROOT, env={**env, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = {}
    for line in done.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("gpu_"):
            figures[name] = float(value)
    rates = [f"gpu_{kind}_tokens_per_s_{n}" for kind in ("engine", "raw") for n in (1, 8, 32)]
    for name in ["gpu_first_token_ms_1080p", "gpu_single_stream_tokens_per_s", *rates,
                 "gpu_engine_vs_raw_1", "gpu_engine_vs_raw_8", "gpu_engine_vs_raw_32"]:
        assert name in figures, f"{name} missing from:\n{done.stdout}"
        assert math.isfinite(figures[name]) and figures[name] > 0, (name, figures[name])
    assert figures["gpu_small_configuration"] == 1
    assert figures["gpu_answer_tokens"] == TOKENS
    # The 1080p screenshot reached the model through the processor, at the default budget.
    assert figures["gpu_visual_tokens_1080p"] == visual_tokens(1920, 1080)
    assert figures["gpu_prompt_tokens_1080p"] > figures["gpu_visual_tokens_1080p"]
    # The small configuration says so, so nobody mistakes its figures for a GPU's.
    assert "not a GPU figure" in done.stdout
    assert not list(tmp_path.rglob("*.safetensors")), "the random checkpoint was left behind"
