"""Write files so a reader never sees half of one: write to a temp name beside it, then rename."""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
