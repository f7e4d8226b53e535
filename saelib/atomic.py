"""Write files so a reader never sees half of one: write to a temp name beside it, then rename.

Every file is created by Python's `open`, so it gets the umask's normal mode (0644 under umask 022)
and a second user of a shared run folder can read it. safetensors' own `save_file` writes through a
private temp file of mode 0600, so tensors are serialised in memory and written here instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save
from torch import Tensor


def write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, as `corpus.read_jsonl` reads them back."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """The same bytes as `safetensors.torch.save_file`, with the umask's mode."""
    write_bytes(path, save(tensors))
