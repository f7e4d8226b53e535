"""Training checkpoints on disk: checkpoints/step-NNNNNNN/ holds state.safetensors (named tensors) and
state.json (plain data). A folder is written under a temp name and renamed into place, so an interrupted
write leaves the previous checkpoint whole; only the newest is kept."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saelib.atomic import save_tensors, write_json
from saelib.errors import BadFile


def write_checkpoint(ckpt_dir: Path, step: int, tensors: dict[str, Tensor], info: dict) -> None:
    """Write ckpt_dir/step-NNNNNNN, then drop older checkpoints."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(tensors, tmp / "state.safetensors")
    write_json(tmp / "state.json", info)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in ckpt_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old)


def read_latest_checkpoint(ckpt_dir: Path) -> tuple[dict[str, Tensor], dict] | None:
    """Tensors and info of the newest checkpoint in ckpt_dir; None if there is none."""
    found = sorted(ckpt_dir.glob("step-*")) if ckpt_dir.exists() else []
    if not found:
        return None
    try:
        info = json.loads((found[-1] / "state.json").read_text(encoding="utf-8"))
        return load_file(str(found[-1] / "state.safetensors")), info
    except (ValueError, OSError, SafetensorError) as err:
        raise BadFile(
            f"The checkpoint {found[-1]} is corrupt ({err}); delete it to train from the start"
        ) from err
