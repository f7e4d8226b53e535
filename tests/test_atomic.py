"""Atomic writes: whole files only, the umask's normal mode, the same bytes as safetensors' save_file."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from saelib.atomic import save_tensors, write_json, write_jsonl, write_text


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_every_writer_gives_the_umasks_mode(tmp_path, umask):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(4, dtype=torch.int32)}
    write_text(tmp_path / "a.txt", "héllo")
    write_json(tmp_path / "b.json", {"x": 1})
    write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": "two"}])
    save_tensors(tensors, tmp_path / "d.safetensors")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.txt", "b.json", "c.jsonl", "d.safetensors"], 0o666 & ~umask)


def test_contents_round_trip_and_no_temp_file_is_left(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(5)}
    save_tensors(tensors, tmp_path / "t.safetensors")
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    assert (tmp_path / "t.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["a"], tensors["a"])
    write_json(tmp_path / "m.json", {"n": [1, 2]})
    write_json(tmp_path / "m.json", {"n": [3]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"n": [3]}
    write_jsonl(tmp_path / "d.jsonl", [{"text": "é"}])
    assert (tmp_path / "d.jsonl").read_text(encoding="utf-8") == '{"text": "\\u00e9"}\n'
    assert not list(tmp_path.glob("*.tmp"))
