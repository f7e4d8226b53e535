"""Read SAE folders written by saelib, SAE Lens, EleutherAI sparsify or dictionary_learning, locally or on
the Hugging Face hub, into saelib's terms: `SAEConfig` fields, metadata and the `SAE` state dict.

Each reader maps the library's tensors onto saelib's `(x - b_dec) @ W_enc + b_enc` encoder and
`latents @ W_dec + b_dec` decoder so that encode and decode compute what the library computes; the tests
check that against outputs the libraries produced themselves (tests/fixtures, scripts/make_fixtures.py).
Only safetensors, JSON and `torch.load(weights_only=True)` are read: never pickled code.

Needs only torch and safetensors (huggingface_hub for "hf:" ids), like `saelib.sae`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saelib.errors import BadArgument, BadFile
from saelib.hooks import parse_hook
from saelib.hub import hub_offline

CONFIG_FILE = "cfg.json"  # saelib and SAE Lens; sparsify's is also cfg.json
WEIGHTS_FILE = "sae_weights.safetensors"  # saelib and SAE Lens
SPARSIFY_WEIGHTS = "sae.safetensors"
DL_WEIGHTS, DL_CONFIG = "ae.pt", "config.json"  # dictionary_learning
INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm")
LAYOUTS = (
    f"saelib ({CONFIG_FILE} with a 'saelib' block + {WEIGHTS_FILE}, or its run folder)",
    f"SAE Lens 5.x/6.x ({CONFIG_FILE} + {WEIGHTS_FILE}: standard, topk, jumprelu)",
    f"EleutherAI sparsify ({CONFIG_FILE} + {SPARSIFY_WEIGHTS}, one subfolder per hookpoint)",
    f"dictionary_learning ({DL_CONFIG} + {DL_WEIGHTS}: AutoEncoder, TopK, BatchTopK, JumpReLU)",
    "a Hugging Face repo folder of one of these, as hf:<owner>/<repo>/<subfolder>",
)


@dataclass
class SAEFiles:
    """What an SAE folder holds, in saelib's terms."""

    config: dict  # SAEConfig fields: d_in, d_sae, arch, k, input_norm
    meta: dict  # model, layer, site, hook_name, format, ... (SAE.meta)
    tensors: dict[str, Tensor]  # named as SAE's state dict
    source: Path  # the file or folder, for error messages
    fix: str  # what to do if the files turn out unusable

    @property
    def folder(self) -> Path:
        return self.source if self.source.is_dir() else self.source.parent


def read_sae_files(path_or_id: str | os.PathLike) -> SAEFiles:
    """Find the layout of a folder (or "hf:<owner>/<repo>/<subfolder>") and read it."""
    if isinstance(path_or_id, str) and path_or_id.startswith("hf:"):
        return read_sae_files(hub_folder(path_or_id))
    path = Path(path_or_id)
    cfg_path = path / CONFIG_FILE
    if cfg_path.exists() and (path / WEIGHTS_FILE).exists():
        cfg = _read_json(cfg_path)
        return _read_saelib(path, cfg) if "saelib" in cfg else _read_sae_lens(path, cfg)
    if cfg_path.exists() and (path / SPARSIFY_WEIGHTS).exists():
        return _read_sparsify(path, _read_json(cfg_path))
    if (path / DL_WEIGHTS).exists() and (path / DL_CONFIG).exists():
        return _read_dictionary_learning(path, _read_json(path / DL_CONFIG))
    if (path / "sae").is_dir():  # a saelib run folder
        return read_sae_files(path / "sae")
    if not path.is_dir():
        raise BadFile(
            f"No SAE at {path}: no such folder. Train one with saelib.train, or pass a folder of "
            + _layouts()
        )
    inside = sorted(sub.name for sub in path.iterdir() if sub.is_dir() and _holds_an_sae(sub))
    if inside:
        raise BadFile(
            f"{path} holds one SAE per hook point: {', '.join(inside)}; pass one of them, "
            f"e.g. {path / inside[0]}"
        )
    raise BadFile(f"No SAE at {path}: the files match none of the layouts saelib reads: " + _layouts())


def _layouts() -> str:
    return "; ".join(LAYOUTS)


def _holds_an_sae(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return CONFIG_FILE in names or {DL_WEIGHTS, DL_CONFIG} <= names


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadFile(f"{path} is corrupt ({err}); download or train the SAE again") from err
    if not isinstance(data, dict):
        raise BadFile(f"{path} is corrupt (not a JSON object); download or train the SAE again")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return {name: t.float() for name, t in load_file(str(path)).items()}
    except (SafetensorError, OSError) as err:  # truncated or not safetensors
        raise BadFile(f"{path} is corrupt ({str(err)[:200]}); download or train the SAE again") from err


def _hook_meta(hook: str | None) -> dict:
    """layer and site of a hook name, or none of them when saelib cannot hook there (e.g. hook_z)."""
    if hook is None:
        return {}
    try:
        layer, site = parse_hook(hook)
    except BadArgument:
        return {"hook_name": hook}
    return {"hook_name": hook, "layer": layer, "site": site}


# ---- saelib -------------------------------------------------------------------------------------------
def _read_saelib(path: Path, cfg: dict) -> SAEFiles:
    """A folder written by `SAE.save`: SAE Lens's flat config plus our fields under "saelib"."""
    ours = dict(cfg["saelib"]) if isinstance(cfg["saelib"], dict) else {}
    fix = "train the SAE again"
    if "arch" not in ours or "d_in" not in cfg or "d_sae" not in cfg:
        raise BadFile(f"{path / CONFIG_FILE} is corrupt (fields missing); {fix}")
    config = {
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "arch": ours.pop("arch"),
        "k": ours.pop("k", 32),
        "input_norm": ours.pop("input_norm", "none"),
    }
    prefixes = ours.pop("prefixes", None)  # matryoshka only
    if prefixes is not None:
        config["prefixes"] = tuple(prefixes)
    return SAEFiles(config, ours, _read_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE, fix)


# ---- SAE Lens ---------------------------------------------------------------------------------------------
def _read_sae_lens(path: Path, cfg: dict) -> SAEFiles:
    """SAE Lens 6.x (architecture + metadata block) or 5.x (flat) config + sae_weights.safetensors.

    Settings saelib has no field for are folded into the weights, as SAE Lens's own folds do:
    apply_b_dec_to_input=False (pre = x @ W_enc + b_enc, e.g. Gemma Scope) into b_enc, and TopK's
    rescale_acts_by_decoder_norm into W_enc, b_enc and W_dec. The run-time normalize_activations
    (constant_norm_rescale, layer_norm) become the SAE's input_norm; the others act only in training.
    """
    fix = "saelib does not support this SAE Lens setting; open it with sae_lens"
    where = path / CONFIG_FILE
    info = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else cfg  # 6.x nests it
    activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    arch = cfg.get("architecture", "standard")
    if arch == "topk" or activation == "topk":  # 5.x: standard + activation_fn_str topk
        arch = "topk"
    elif arch == "standard" and activation == "relu":
        arch = "relu"
    elif arch != "jumprelu":
        raise BadFile(
            f"{where}: SAE Lens architecture {arch!r} (activation {activation!r}); saelib reads standard, "
            "topk and jumprelu (batchtopk as saved by save_inference_model)"
        )
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool):  # before SAE Lens 3.x
        norm = "expected_average_only_in" if norm else "none"
    unsupported = {
        "a per-head hook": info.get("hook_head_index", info.get("hook_point_head_index")) is not None,
        "finetuning_scaling_factor": bool(cfg.get("finetuning_scaling_factor")),
        "reshape_activations": cfg.get("reshape_activations", "none") != "none",
    }
    if any(unsupported.values()):
        raise BadFile(f"{where}: {', '.join(k for k, v in unsupported.items() if v)}; {fix}")
    tensors = _read_safetensors(path / WEIGHTS_FILE)
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - tensors.keys()
    if missing:
        raise BadFile(f"{path / WEIGHTS_FILE} lacks {sorted(missing)}; {fix}")
    if not cfg.get("apply_b_dec_to_input", True):
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        decoder_norms = tensors["W_dec"].norm(dim=-1)
        tensors["W_enc"] = tensors["W_enc"] * decoder_norms
        tensors["b_enc"] = tensors["b_enc"] * decoder_norms
        tensors["W_dec"] = tensors["W_dec"] / decoder_norms[:, None]
    config = {
        "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"),
        "arch": arch,
        "k": cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k", 32),
        "input_norm": norm if norm in INPUT_NORMS else "none",
    }
    meta = {
        "format": "SAE Lens 6.x" if info is not cfg else "SAE Lens 5.x",
        "model": info.get("model_name"),
        **_hook_meta(info.get("hook_name", info.get("hook_point"))),
        "context_size": info.get("context_size"),
        "dataset_path": info.get("dataset_path"),
    }
    return SAEFiles(config, meta, tensors, path / WEIGHTS_FILE, fix)


# ---- EleutherAI sparsify ----------------------------------------------------------------------------------
def _read_sparsify(path: Path, cfg: dict) -> SAEFiles:
    """cfg.json + sae.safetensors of `Sae.save_to_disk`: a TopK SAE, encoder.weight [d_sae, d_in].

    sparsify keeps the k largest of relu(pre), saelib takes relu of the k largest pre: the same latents.
    The folder's name is the hookpoint ("layers.8"); the run folder above may name the model.
    """
    fix = "this sparsify setting is not supported by saelib; open it with sparsify"
    where = path / CONFIG_FILE
    if cfg.get("transcode") or cfg.get("skip_connection"):
        raise BadFile(f"{where}: a transcoder or skip connection, not an SAE of its input; {fix}")
    if cfg.get("activation", "topk") != "topk":
        raise BadFile(f"{where}: activation {cfg['activation']!r}; saelib reads sparsify's topk SAEs")
    tensors = _read_safetensors(path / SPARSIFY_WEIGHTS)
    try:
        W_enc = tensors["encoder.weight"]
        weights = {"W_enc": W_enc.T.contiguous(), "b_enc": tensors["encoder.bias"], "W_dec": tensors["W_dec"]}
        weights["b_dec"] = tensors["b_dec"]
    except KeyError as err:
        raise BadFile(f"{path / SPARSIFY_WEIGHTS} lacks tensor {err}; download the SAE again") from err
    d_sae, d_in = W_enc.shape
    run_config = path.parent / "config.json"  # written by sparsify's trainer next to the hookpoints
    model = _read_json(run_config).get("model") if run_config.exists() else None
    meta = {"format": "sparsify", "model": model, **_hook_meta(path.name)}
    return SAEFiles(
        {"d_in": d_in, "d_sae": d_sae, "arch": "topk", "k": cfg.get("k")}, meta, weights, path, fix
    )


# ---- dictionary_learning ----------------------------------------------------------------------------------
_DL_SITES = {"resid_post": "resid", "resid_pre": "resid_pre", "mlp_out": "mlp_out", "attn_out": "attn_out"}


def _read_dictionary_learning(path: Path, config: dict) -> SAEFiles:
    """ae.pt (a state dict, loaded with weights_only=True) + config.json of dictionary_learning's trainers."""
    fix = "this dictionary_learning class is not supported by saelib; open it with dictionary_learning"
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    dict_class = trainer.get("dict_class")
    try:
        state = torch.load(path / DL_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds here: refuse anything that is not plain tensors
        raise BadFile(f"{path / DL_WEIGHTS} is not a plain state dict ({str(err)[:200]}); {fix}") from err
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise BadFile(f"{path / DL_WEIGHTS} is not a state dict of tensors; {fix}")
    state = {name: t.float() for name, t in state.items()}
    try:
        if dict_class == "JumpReluAutoEncoder":  # pre = x @ W_enc + b_enc: b_dec is folded into b_enc
            arch, weights = "jumprelu", {n: state[n] for n in ("W_enc", "W_dec", "b_dec", "threshold")}
            weights["b_enc"] = state["b_enc"] + state["b_dec"] @ state["W_enc"]
        elif dict_class in ("AutoEncoder", "AutoEncoderTopK", "TopKSAE", "BatchTopKSAE"):
            arch = {"AutoEncoder": "relu", "BatchTopKSAE": "batchtopk"}.get(dict_class, "topk")
            weights = {
                "W_enc": state["encoder.weight"].T.contiguous(),
                "b_enc": state["encoder.bias"],
                "W_dec": state["decoder.weight"].T.contiguous(),
                "b_dec": state["bias" if dict_class == "AutoEncoder" else "b_dec"],
            }
            if arch == "batchtopk":  # one global threshold, applied to relu(pre)
                weights["threshold"] = state["threshold"].expand(weights["b_enc"].shape).clone()
        else:
            raise BadFile(f"{path / DL_CONFIG}: dict_class {dict_class!r}; {fix}")
    except KeyError as err:
        raise BadFile(f"{path / DL_WEIGHTS} lacks tensor {err} for {dict_class}; download it again") from err
    d_in, d_sae = weights["W_enc"].shape
    submodule = str(trainer.get("submodule_name") or "")  # e.g. resid_post_layer_3
    site = next((site for name, site in _DL_SITES.items() if submodule.startswith(name)), None)
    meta = {"format": "dictionary_learning", "model": trainer.get("lm_name"), "submodule_name": submodule}
    if site is not None and isinstance(trainer.get("layer"), int):
        meta.update(layer=trainer["layer"], site=site)
    k = int(state["k"]) if "k" in state else trainer.get("k", 32)
    return SAEFiles({"d_in": d_in, "d_sae": d_sae, "arch": arch, "k": k}, meta, weights, path, fix)


# ---- Hugging Face hub ------------------------------------------------------------------------------------
def hub_folder(spec: str) -> Path:
    """The local folder of "hf:<owner>/<repo>/<subfolder>": from the cache, else downloads only its files."""
    parts = spec.removeprefix("hf:").strip("/").split("/")
    if len(parts) < 2:
        raise BadArgument(
            f"{spec!r} is not hf:<owner>/<repo>/<subfolder>, "
            "e.g. hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre"
        )
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{subfolder}/*"] if subfolder else None
    try:  # the cache first: no network touched
        local = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if (local / subfolder).is_dir() and any((local / subfolder).iterdir()):
            return local / subfolder
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise BadArgument(
            f"{spec} is not in the Hugging Face cache and the hub cannot be reached; download it on a "
            f"machine with network (huggingface-cli download {repo_id} --include '{subfolder}/*') or pass a "
            "local folder"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns)) / subfolder
    except (HfHubHTTPError, OSError, ValueError) as err:  # no such repo, gated, network dropped
        raise BadArgument(f"Could not download {spec} ({type(err).__name__}: {str(err)[:200]})") from err
