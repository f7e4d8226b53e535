"""Benchmark command line, at toy sizes: it runs and prints its table (speed is never asserted here)."""

import importlib
import json
import math
import re

import pytest

from saelib.bench.__main__ import COMMANDS, main
from saelib.precision import native_bf16
from saelib.sae import ARCHS


def test_every_command_imports():
    for command in COMMANDS:
        assert callable(importlib.import_module(f"saelib.bench.{command}").main)


def test_unknown_command_prints_usage():
    with pytest.raises(SystemExit, match="usage: python -m saelib.bench collect|train|explorer|scale"):
        main(["nonsense"])


def test_train_bench_runs_at_toy_size(capsys):
    main(["train", "--shapes", "8x32", "--batch-size", "16", "--k", "2", "--seconds", "0", "--repeats", "1"])
    steps = re.findall(r"^ +8x32 +(.+?) +\d+ +\d+\.\d", capsys.readouterr().out, flags=re.MULTILINE)
    precisions = ["float32", "bfloat16"] if native_bf16("cpu") else ["float32"]
    expected = ["dense ref topk float32"]
    for precision in precisions:
        expected += [
            f"roofline 6 GEMM {precision}",
            f"1 GEMM {precision}",
            *(f"{a} {precision}" for a in ARCHS),
        ]
    assert steps == expected


def test_scale_bench_reports_numbers_at_toy_size(capsys):
    """Launches torchrun twice (1 and 2 processes) at a toy shape; every figure of the report is a number."""
    main(
        ["scale", "--d-in", "8", "--d-sae", "32", "--k", "2", "--batch-size", "16", "--steps", "4"]
        + ["--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert [run["processes"] for run in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert run["timed_steps"] == 2  # steps 2..4: the first --warmup-steps (2) are left out
        for key in ("tokens_per_s", "step_seconds", "wall_seconds", "cpu_share", "cores_per_process"):
            assert isinstance(run[key], float) and math.isfinite(run[key]) and run[key] > 0, key
        assert isinstance(run["short_of_cores"], bool)
    assert isinstance(report["efficiency"], float) and report["efficiency"] > 0
    volume = report["allreduce_bytes_per_step"]
    assert volume["parameters"] == 8 * 32 * 2 + 32 + 8  # W_enc, W_dec, b_enc, b_dec
    assert volume["gradients"] == 4 * volume["parameters"]  # one flat float32 all-reduce
    assert volume["statistics"] > 0 and volume["total"] == volume["gradients"] + volume["statistics"]
