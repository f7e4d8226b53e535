"""The sparse autoencoder: one module for four activation rules, saved in SAE Lens's on-disk layout.

    pre     = (x - b_dec) @ W_enc + b_enc                       [.., d_sae]
    latents = relu(pre)                                         relu
            = relu of the k largest pre, zeros elsewhere         topk
            = relu(pre) where pre > threshold, zeros elsewhere   jumprelu, batchtopk (at inference)
    recon   = latents @ W_dec + b_dec                           [.., d_in]

BatchTopK keeps the k * batch largest pre-activations of a whole batch while training and replaces
that rule by one global threshold afterwards (Bussmann et al., 2024), so it saves as a JumpReLU.

Training normalises inputs to mean squared norm d_in; `folded(scale)` moves that scale into the
weights so a saved SAE reads raw activations, as SAE Lens's `fold_activation_norm_scaling_factor`.

The sparse training path (`SparseEncode`, `SparseDecode`) lives here too: both are custom autograd
functions whose backward only touches the selected (token, latent) pairs.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ARCHS = ("relu", "topk", "batchtopk", "jumprelu")
WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
HOOK_NAMES = {"resid": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out"}
# SAE Lens architecture and activation function for each of ours (batchtopk is exported as jumprelu)
SAE_LENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    arch: str = "topk"
    k: int = 32  # latents per token (topk) or per token on average over a batch (batchtopk)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"Unknown arch {self.arch!r}; use one of {ARCHS}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.arch in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise ValueError(
                f"k={self.k} must be between 1 and d_sae={self.d_sae}; lower k or raise the expansion"
            )


class SAE(nn.Module):
    """Weights in SAE Lens's shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in]."""

    def __init__(self, cfg: SAEConfig, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.meta = dict(meta or {})
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.arch == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))
        elif cfg.arch == "batchtopk":
            # set from the batch statistics while training, not by gradient descent
            self.register_buffer("threshold", torch.zeros(cfg.d_sae))

    def __repr__(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.arch in ("topk", "batchtopk") else ""
        return f"SAE({c.arch}, d_in={c.d_in}, d_sae={c.d_sae}{extra}, meta={self.meta})"

    def pre_acts(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Latents [.., d_sae] of activations [.., d_in]."""
        pre = self.pre_acts(x)
        if self.cfg.arch == "relu":
            return F.relu(pre)
        if self.cfg.arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, F.relu(top.values))
        return F.relu(pre) * (pre > self.threshold)

    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

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
        """Write cfg.json + sae_weights.safetensors (SAE Lens layout), each to a temp name then renamed.

        (Not via saelib.atomic: this module must import alone, see scripts/check_saelens.py.)"""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, **(metadata or {})}
        tensors = {name: t.detach().float().contiguous() for name, t in self.state_dict().items()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path / WEIGHTS_FILE)
        tmp = path / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(self._sae_lens_config(meta), indent=1))
        os.replace(tmp, path / CONFIG_FILE)
        self.meta = meta
        return path

    def _sae_lens_config(self, meta: dict) -> dict:
        """Flat SAE Lens config: readable by SAE Lens 5.x and by 6.x (through its pre-6.0 converter).

        Our own fields sit under "saelib"; SAE Lens drops keys it does not know.
        """
        c = self.cfg
        layer, site = meta.get("layer"), meta.get("site", "resid")
        activation_kwargs = {"k": c.k} if c.arch == "topk" else {}
        return {
            "architecture": SAE_LENS_ARCH[c.arch],
            "d_in": c.d_in,
            "d_sae": c.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",  # the input scale is folded into the weights
            "finetuning_scaling_factor": False,
            "activation_fn_str": "topk" if c.arch == "topk" else "relu",
            "activation_fn_kwargs": activation_kwargs,
            "model_name": meta.get("model"),
            # SAE Lens needs a string here even when the layer is unknown
            "hook_name": HOOK_NAMES.get(site, site)
            if layer is None
            else f"blocks.{layer}.{HOOK_NAMES.get(site, site)}",
            "hook_layer": layer,
            "hook_head_index": None,
            "context_size": meta.get("context_size", 128),
            "prepend_bos": True,
            "seqpos_slice": [1, None],  # trained without the first token of each text
            "dataset_path": meta.get("dataset_path", ""),
            "dataset_trust_remote_code": False,
            "sae_lens_training_version": None,
            "neuronpedia_id": None,
            "model_from_pretrained_kwargs": {},
            "saelib": {"arch": c.arch, "k": c.k, **meta},
        }


def load_sae(path: str | os.PathLike) -> SAE:
    """Load an SAE written by `SAE.save` (or `train`); it works on raw activations."""
    path = Path(path)
    if (path / "sae" / CONFIG_FILE).exists():
        path = path / "sae"
    if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise ValueError(
            f"No SAE at {path} (need {CONFIG_FILE} and {WEIGHTS_FILE}); train one with saelib.train"
        )
    try:
        cfg_dict = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / CONFIG_FILE} is corrupt ({err}); train the SAE again") from err
    ours = dict(cfg_dict.get("saelib") or {})
    if "arch" not in ours:
        raise ValueError(
            f"{path / CONFIG_FILE} was not written by saelib (no 'saelib' block); "
            "load it with sae_lens.SAE.load_from_disk instead"
        )
    arch, k = ours.pop("arch"), ours.pop("k")
    sae = SAE(SAEConfig(cfg_dict["d_in"], cfg_dict["d_sae"], arch=arch, k=k), meta=ours)
    try:
        sae.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except (SafetensorError, OSError, RuntimeError) as err:  # truncated file, missing or misshapen tensors
        raise ValueError(
            f"{path / WEIGHTS_FILE} is corrupt or does not match {CONFIG_FILE} "
            f"({str(err).splitlines()[0][:200]}); train the SAE again"
        ) from err
    return sae.eval()


# ---- sparse training path ------------------------------------------------------------------------


def _sum_by_latent(rows: Tensor, cols: Tensor, weights: Tensor, dense: Tensor, d_sae: int) -> Tensor:
    """out[j] = sum over entries n with cols[n] == j of weights[n] * dense[rows[n]]   -> [d_sae, d].

    This is S^T @ dense for the sparse matrix S = (rows, cols, weights), done as one embedding_bag over
    the entries sorted by latent, so no [n_entries, d] product is ever materialised.
    """
    order = cols.argsort()
    counts = torch.bincount(cols, minlength=d_sae)
    offsets = torch.zeros(d_sae + 1, dtype=torch.long, device=cols.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return F.embedding_bag(
        rows[order], dense, offsets, mode="sum", per_sample_weights=weights[order], include_last_offset=True
    )


def row_offsets(rows: Tensor, n_rows: int) -> Tensor:
    """CSR row pointer [n_rows + 1] of entries sorted by row."""
    offsets = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=offsets[1:])
    return offsets


class SparseEncode(torch.autograd.Function):
    """values = (x @ W_enc + bias)[rows, cols] for the entries `select(pre)` picks.

    Forward is the one dense GEMM of a TopK step. The gradient of the loss reaches only the selected
    pre-activations, so backward is two sparse sums instead of two dense GEMMs:
    dW_enc = x^T @ G and dbias = column sums of G, with G the sparse [batch, d_sae] gradient.
    `x` is data and gets no gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, bias: Tensor, select):
        pre = torch.addmm(bias, x, W_enc)
        rows, cols = select(pre)
        values = pre[rows, cols]
        ctx.save_for_backward(x, rows, cols)
        ctx.d_sae = W_enc.shape[1]
        ctx.mark_non_differentiable(rows, cols)
        return values, rows, cols

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_rows, _grad_cols):
        x, rows, cols = ctx.saved_tensors
        grad_W_enc = _sum_by_latent(rows, cols, grad_values, x, ctx.d_sae).t()
        grad_bias = torch.zeros(ctx.d_sae, dtype=grad_values.dtype).index_add_(0, cols, grad_values)
        return None, grad_W_enc, grad_bias, None


class SparseDecode(torch.autograd.Function):
    """recon[b] = sum over entries n in row b of values[n] * W_dec[cols[n]]; entries sorted by row.

    Forward is an embedding_bag (k rows of W_dec per token instead of a dense GEMM); backward gives
    the values' gradient as a sampled dense-dense product and W_dec's gradient touches only the
    selected rows.
    """

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor):
        ctx.save_for_backward(values, W_dec, rows, cols, offsets)
        return F.embedding_bag(
            cols, W_dec, offsets, mode="sum", per_sample_weights=values, include_last_offset=True
        )

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec, rows, cols, offsets = ctx.saved_tensors
        with warnings.catch_warnings():  # "sparse CSR support is in beta" (used for this one product)
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                offsets, cols, torch.zeros_like(values), size=(len(grad_out), len(W_dec))
            )
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.t()).values()
        grad_W_dec = _sum_by_latent(rows, cols, values, grad_out, len(W_dec))
        return grad_values, grad_W_dec, None, None, None
