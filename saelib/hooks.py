"""Hook points by name: saelib's (layer, site), TransformerLens names and Hugging Face module paths.

saelib's layer L, site "resid" is the output of block L: TransformerLens `blocks.L.hook_resid_post`,
the Hugging Face module `model.layers.L` (sparsify's `layers.L`). Site "resid_pre" is the input of
block L (`blocks.L.hook_resid_pre`): the output of block L-1, or the embeddings for L = 0.

Pure Python, so `saelib.sae` can name its hook point in a venv without transformers.
"""

from __future__ import annotations

import re

from saelib.errors import BadArgument

SITES = ("resid", "resid_pre", "mlp_out", "attn_out")
TL_HOOKS = {
    "resid": "hook_resid_post",
    "resid_pre": "hook_resid_pre",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}
# blocks.8.hook_resid_pre
_TL_NAME = re.compile(r"blocks\.(\d+)\.(" + "|".join(TL_HOOKS.values()) + ")")
# model.layers.8, layers.8.mlp, gpt_neox.layers.8.attention, transformer.h.8
_MODULE_PATH = re.compile(r"(?:\w+\.)*?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn|attention))?")
_MODULE_SITES = {
    None: "resid",
    "mlp": "mlp_out",
    "self_attn": "attn_out",
    "attn": "attn_out",
    "attention": "attn_out",
}
EXAMPLES = "'blocks.8.hook_resid_post', 'blocks.8.hook_resid_pre', 'blocks.8.hook_mlp_out', 'model.layers.8'"


def parse_hook(name: str) -> tuple[int, str]:
    """(layer, site) of a TransformerLens hook name or a Hugging Face module path."""
    if match := _TL_NAME.fullmatch(name):
        site = next(site for site, hook in TL_HOOKS.items() if hook == match[2])
        return int(match[1]), site
    if match := _MODULE_PATH.fullmatch(name):
        return int(match[1]), _MODULE_SITES[match[2]]
    raise BadArgument(
        f"Unknown hook name {name!r}; use a block index and a site {SITES}, or a name like {EXAMPLES}"
    )


def hook_name(layer: int | None, site: str) -> str:
    """The TransformerLens name of (layer, site), e.g. `blocks.8.hook_resid_post` for (8, "resid")."""
    if site not in TL_HOOKS:
        raise BadArgument(f"Unknown site {site!r}; use one of {SITES}")
    return TL_HOOKS[site] if layer is None else f"blocks.{layer}.{TL_HOOKS[site]}"
