"""The sparse autoencoder: one module for five activation rules, saved in SAE Lens's on-disk layout.

    pre     = (x - b_dec) @ W_enc + b_enc                       [.., d_sae]
    latents = relu(pre)                                         relu
            = relu of the k largest pre, zeros elsewhere         topk
            = relu(pre) where pre > threshold, zeros elsewhere   jumprelu, batchtopk, matryoshka
    recon   = latents @ W_dec + b_dec                           [.., d_in]

BatchTopK keeps the k * batch largest pre-activations of a whole batch while training and replaces
that rule by one global threshold afterwards (Bussmann et al., 2024), so it saves as a JumpReLU.
Matryoshka is a BatchTopK whose nested prefixes of the dictionary (the first `prefixes[i]` latents)
each learn to reconstruct the input alone (Bussmann et al., 2025; Nabeshima, 2024): general features
settle in the small prefixes instead of being absorbed by specific ones. It too saves as a JumpReLU,
with the prefix sizes in the "saelib" block of cfg.json.

Training normalises inputs to mean squared norm d_in; `folded(scale)` moves that scale into the
weights so a saved SAE reads raw activations, as SAE Lens's `fold_activation_norm_scaling_factor`.

The module needs only torch and safetensors (no notebook dependencies), so a bare SAE Lens venv can
import it; the sparse training path is in `saelib.sparse_ops`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saelib.atomic import save_tensors, write_json
from saelib.distributed import resolve_device
from saelib.errors import BadArgument, BadFile
from saelib.formats import CONFIG_FILE, INPUT_NORMS, WEIGHTS_FILE, read_sae_files
from saelib.hooks import hook_name
from saelib.hub import BUNDLED_MODEL_ID, BUNDLED_MODEL_NOTE

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
THRESHOLD_ARCHS = ("batchtopk", "jumprelu", "matryoshka")  # a threshold per latent at inference
BATCH_ARCHS = ("batchtopk", "matryoshka")  # the k * batch largest of a batch while training
# SAE Lens architecture and activation function for each of ours (batchtopk is exported as jumprelu)
SAE_LENS_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
    "matryoshka": "jumprelu",
}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    arch: str = "topk"
    k: int = 32  # latents per token (topk) or per token on average over a batch (batchtopk, matryoshka)
    input_norm: str = "none"  # SAE Lens's run-time normalize_activations, for SAEs it trained (INPUT_NORMS)
    # matryoshka: increasing prefix sizes, the last one d_sae (None: d_sae/16, /8, /4, /2, d_sae)
    prefixes: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise BadArgument(f"Unknown arch {self.arch!r}; use one of {ARCHS}")
        if self.input_norm not in INPUT_NORMS:
            raise BadArgument(f"Unknown input_norm {self.input_norm!r}; use one of {INPUT_NORMS}")
        if self.d_in < 1 or self.d_sae < 1:
            raise BadArgument(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.arch == "matryoshka":
            self.prefixes = self._check_prefixes()
        elif self.prefixes is not None:
            raise BadArgument(f"prefixes are for arch='matryoshka', not {self.arch!r}")
        if self.arch in ("topk", *BATCH_ARCHS) and not 1 <= self.k <= self.d_sae:
            raise BadArgument(
                f"k={self.k} must be between 1 and d_sae={self.d_sae}; lower k or raise the expansion"
            )

    def _check_prefixes(self) -> tuple[int, ...]:
        if self.prefixes is None:
            return tuple(sorted({max(1, self.d_sae // div) for div in (16, 8, 4, 2)} | {self.d_sae}))
        prefixes = tuple(int(p) for p in self.prefixes)
        if not prefixes or prefixes[-1] != self.d_sae or any(a >= b for a, b in zip(prefixes, prefixes[1:])):
            raise BadArgument(
                f"prefixes must increase and end at d_sae={self.d_sae}, got {list(prefixes)}; "
                "e.g. [d_sae // 8, d_sae // 2, d_sae]"
            )
        if prefixes[0] < 1:
            raise BadArgument(f"prefixes must be positive, got {list(prefixes)}")
        return prefixes


class SAE(nn.Module):
    """Weights in SAE Lens's shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in]."""

    def __init__(self, cfg: SAEConfig, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.path: Path | None = (
            None  # the folder it was loaded from or saved to (feature_stats caches there)
        )
        # [d_in, d_sae], stored latent-major (as nn.Linear's weight): the sparse TopK backward writes its
        # gradient in that layout, so no step pays for a transposed copy
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in).t())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.arch in THRESHOLD_ARCHS:
            # set by the trainer: from batch statistics (batchtopk, matryoshka) or from its own
            # log-parametrised copy (jumprelu)
            self.register_buffer("threshold", torch.zeros(cfg.d_sae))

    def __repr__(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.arch in ("topk", *BATCH_ARCHS) else ""
        extra += f", prefixes={list(c.prefixes)}" if c.prefixes else ""
        head = f"SAE({c.arch}, d_in={c.d_in}, d_sae={c.d_sae}{extra})"
        return "\n".join([head] + [f"  {key}: {value!r}" for key, value in self.meta.items()])

    def pre_acts(self, x: Tensor) -> Tensor:
        centred = (self.normalized(x) - self.b_dec).reshape(-1, self.cfg.d_in)
        pre = torch.addmm(self.b_enc, centred, self.W_enc)  # the bias added inside the GEMM
        return pre.reshape(*x.shape[:-1], self.cfg.d_sae)

    def normalized(self, x: Tensor) -> Tensor:
        """x as the encoder reads it: x itself, or for SAEs trained by SAE Lens with a run-time input norm,
        x rescaled to norm sqrt(d_in) (constant_norm_rescale) or layer-normed without affine (layer_norm)."""
        if self.cfg.input_norm == "constant_norm_rescale":
            return x * (self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if self.cfg.input_norm == "layer_norm":
            centered = x - x.mean(dim=-1, keepdim=True)
            return centered / (centered.std(dim=-1, keepdim=True) + 1e-5)
        return x

    def denormalized(self, recon: Tensor, x: Tensor) -> Tensor:
        """A reconstruction of normalized(x) brought back to x's scale, as SAE Lens does it."""
        if self.cfg.input_norm == "constant_norm_rescale":
            return recon / (self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True))
        if self.cfg.input_norm == "layer_norm":
            mean = x.mean(dim=-1, keepdim=True)
            return recon * (x - mean).std(dim=-1, keepdim=True) + mean
        return recon

    def encode(self, x: Tensor) -> Tensor:
        """Latents [.., d_sae] of activations [.., d_in]."""
        if x.shape[-1:] != (self.cfg.d_in,):
            raise BadArgument(
                f"This SAE reads d_in={self.cfg.d_in} activations ({self._trained_on()}); got a tensor of "
                f"shape {tuple(x.shape)}. Pass activations of that model, layer and site"
            )
        return self.activate(self.pre_acts(x))

    def activate(self, pre: Tensor) -> Tensor:
        """Latents [.., d_sae] from pre-activations: the arch's rule (encode = activate after pre_acts)."""
        if self.cfg.arch == "relu":
            return F.relu(pre)
        if self.cfg.arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))
        # relu(pre) * (pre > threshold) in one pass over pre instead of three: half the time on a CPU
        return pre.masked_fill(pre <= self.threshold.clamp_min(0), 0)

    def firing_counts(self, pre: Tensor) -> Tensor:
        """[d_sae]: on how many rows of pre-activations [n, d_sae] each latent fires, without building the
        latents: TopK counts its selected indices, so a pass that only needs densities skips the dense
        [n, d_sae] scatter and compare."""
        if self.cfg.arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.bincount(top.indices[top.values > 0], minlength=self.cfg.d_sae)
        floor = 0.0 if self.cfg.arch == "relu" else self.threshold.clamp_min(0)
        return (pre > floor).sum(0, dtype=torch.int32)

    def decode(self, latents: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction [.., d_in] of latents [.., d_sae]. An SAE with an input norm needs the input x the
        latents came from, to bring the reconstruction back to its scale."""
        if latents.shape[-1:] != (self.cfg.d_sae,):
            raise BadArgument(
                f"This SAE decodes d_sae={self.cfg.d_sae} latents ({self._trained_on()}); got a tensor of "
                f"shape {tuple(latents.shape)}. Pass latents from this SAE's encode"
            )
        recon = latents @ self.W_dec + self.b_dec
        if self.cfg.input_norm == "none":
            return recon
        if x is None:
            raise BadArgument(
                f"This SAE normalises its input ({self.cfg.input_norm}); pass decode(latents, x) with the "
                "activations x the latents came from, so the reconstruction gets x's scale back"
            )
        return self.denormalized(recon, x)

    def _trained_on(self) -> str:
        """'SmolLM2-135M layer 15 resid', from what the metadata records."""
        layer = self.meta.get("layer")
        parts = [self.meta.get("model"), None if layer is None else f"layer {layer}", self.meta.get("site")]
        return (
            " ".join(str(part) for part in parts if part is not None)
            or "where it was trained is not recorded"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    @torch.no_grad()
    def folded(self, scale: float) -> SAE:
        """A copy that takes raw activations x, given this SAE was trained on scale * x."""
        out = copy.deepcopy(self)
        out.W_enc.mul_(scale)
        out.W_dec.div_(scale)
        out.b_dec.div_(scale)
        out.meta["norm_scale"] = float(scale)
        return out

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write cfg.json + sae_weights.safetensors (SAE Lens layout), each written whole or not at all."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, **(metadata or {})}
        save_tensors(
            {name: t.detach().float().cpu().contiguous() for name, t in self.state_dict().items()},
            path / WEIGHTS_FILE,
        )
        write_json(path / CONFIG_FILE, self._sae_lens_config(meta))
        self.meta, self.path = meta, path
        return path

    def _sae_lens_config(self, meta: dict) -> dict:
        """Flat SAE Lens config: readable by SAE Lens 5.x and by 6.x (through its pre-6.0 converter).

        Our own fields sit under "saelib"; SAE Lens drops keys it does not know. The bundled model ("default")
        is named by its Hugging Face id, with a note that its weights are the Q4_1 dequantization.
        """
        c = self.cfg
        bundled = meta.get("model") == "default"
        note = {"model_note": BUNDLED_MODEL_NOTE} if bundled else {}
        activation_kwargs = {"k": c.k} if c.arch == "topk" else {}
        return {
            "architecture": SAE_LENS_ARCH[c.arch],
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": c.input_norm,  # "none" but for SAE Lens SAEs: training folds the scale
            "finetuning_scaling_factor": False,
            "activation_fn_str": "topk" if c.arch == "topk" else "relu",
            "activation_fn_kwargs": activation_kwargs,
            "model_name": BUNDLED_MODEL_ID if bundled else meta.get("model"),
            # SAE Lens needs a string here even when the layer is unknown
            "hook_name": hook_name(meta.get("layer"), meta.get("site", "resid")),
            "hook_layer": meta.get("layer"),
            "hook_head_index": None,
            "context_size": meta.get("context_size", 128),
            "prepend_bos": True,
            "seqpos_slice": [1, None],  # trained without the first token of each text
            "dataset_path": meta.get("dataset_path", ""),
            "dataset_trust_remote_code": False,
            "sae_lens_training_version": None,
            "neuronpedia_id": None,
            "model_from_pretrained_kwargs": {},
            "saelib": {
                "arch": c.arch,
                "k": c.k,
                "input_norm": c.input_norm,
                "prefixes": c.prefixes and list(c.prefixes),
                **meta,
                **note,
            },
        }


def load_sae(path_or_id: str | os.PathLike, device: str | torch.device = "auto") -> SAE:
    """Load an SAE that works on raw activations onto `device` ("auto": CUDA if torch sees one, else CPU),
    from a folder written by saelib (or its run folder), SAE Lens, sparsify or dictionary_learning, or from
    the hub as "hf:<owner>/<repo>/<subfolder>"."""
    torch_device = resolve_device(device)
    files = read_sae_files(path_or_id)
    try:
        cfg = SAEConfig(**files.config)
    except (TypeError, BadArgument) as err:  # a field missing or out of range
        raise BadFile(f"{files.source} has an unusable config ({err}); {files.fix}") from err
    sae = SAE(cfg, files.meta)
    try:
        sae.load_state_dict(files.tensors)
    except RuntimeError as err:  # missing or misshapen tensors
        raise BadFile(
            f"{files.source} does not match its config ({str(err).splitlines()[0][:200]}); {files.fix}"
        ) from err
    sae.path = files.folder
    return sae.to(torch_device).eval()
