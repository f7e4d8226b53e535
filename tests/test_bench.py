"""Benchmark command line, at toy sizes: it runs and prints its table (speed is never asserted here)."""

import importlib
import re

import pytest

from saelib.bench.__main__ import COMMANDS, main
from saelib.precision import native_bf16
from saelib.sae import ARCHS


def test_every_command_imports():
    for command in COMMANDS:
        assert callable(importlib.import_module(f"saelib.bench.{command}").main)


def test_unknown_command_prints_usage():
    with pytest.raises(SystemExit, match="usage: python -m saelib.bench collect|train|explorer"):
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
