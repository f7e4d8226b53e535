"""`python -m saelib`: the whole pipeline on a tiny local model; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TRAINING_TEXT

from saelib.__main__ import build_parser, main


def saelib_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saelib", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_gpt2):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2.model.save_pretrained(path)
    tiny_gpt2.tokenizer.save_pretrained(path)
    return path


def test_collect_train_evaluate_report(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"{text} Take {i}." for i in range(4) for text in TRAINING_TEXT))
    run = str(tmp_path / "run")
    collect = saelib_cli(
        "collect", "--run-dir", run, "--model", str(tiny_model_dir), "--corpus", str(corpus),
        "--layer", "blocks.1.hook_resid_pre",
    )  # fmt: skip
    assert collect.returncode == 0, collect.stderr
    assert "ActivationStore" in collect.stdout and "collect L1" in collect.stderr  # progress bar on stderr
    train = saelib_cli(
        "train",
        "--run-dir",
        run,
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--k",
        "4",
        "--expansion",
        "2",
        "--no-progress",
    )
    assert train.returncode == 0, train.stderr
    cfg = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())
    assert cfg["saelib"]["train"]["k"] == 4 and cfg["saelib"]["layer"] == 1
    assert cfg["hook_name"] == "blocks.1.hook_resid_pre"
    evaluate = saelib_cli("evaluate", "--run-dir", run, "--n-eval-texts", "5")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "ce_loss_recovered" in json.loads(evaluate.stdout)
    assert (tmp_path / "run" / "metrics.json").exists()
    report = saelib_cli("report", "--run-dir", run, "--no-labels", "--features", "0", "1")
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "run" / "report" / "dashboard.html").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--run-dir", "no/such/run"], "No activation store"),
        (["evaluate", "--run-dir", "no/such/run", "--no-lm"], "No SAE at"),
        (["collect", "--run-dir", "RUN", "--corpus", "no/such/file.txt"], "no/such/file.txt"),
        (["collect", "--run-dir", "RUN", "--model", "MODEL", "--layer", "99"], "out of range"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_model_dir, args, message):
    args = [str(tmp_path / "run") if a == "RUN" else str(tiny_model_dir) if a == "MODEL" else a for a in args]
    if "--model" not in args and args[0] == "collect":
        args += ["--model", str(tiny_model_dir)]
    result = saelib_cli(*args)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["collect", "--device", "gpu"], "Unknown device 'gpu'; use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["train", "--device", "cuda:x"], "Unknown device"),
        (["evaluate", "--device", "xla"], "not supported"),
        (["report", "--device", "cuda" if not torch.cuda.is_available() else "cuda:99"], "cuda"),
        (["collect", "--device-map", "{cpu"], "not valid JSON"),
    ],
)
def test_bad_device_fails_before_any_work(capsys, args, message):
    """Checked in-process (no model is loaded): one error line naming the fix, exit status 2."""
    assert main([args[0], "--run-dir", "no/such/run", *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_evaluate_and_report_refuse_torchrun(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", "--run-dir", "no/such/run"]) == 2
    assert "launch it with python -m saelib, not torchrun" in capsys.readouterr().err


def test_help_lists_the_commands_and_examples():
    result = saelib_cli("--help")
    assert result.returncode == 0
    assert all(
        command in result.stdout for command in ("collect", "train", "evaluate", "report", "examples:")
    )


def test_train_options_parse_as_their_fields_types():
    args = build_parser().parse_args(
        ["train", "--run-dir", "r", "--lr", "1e-3", "--n-tokens", "5000", "--l1-coeff", "2", "--arch", "relu"]
    )
    assert (args.lr, args.n_tokens, args.l1_coeff, args.arch) == (1e-3, 5000, 2.0, "relu")
    assert build_parser().parse_args(["train", "--run-dir", "r"]).lr is None  # the arch's default
