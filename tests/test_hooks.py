"""Hook names: TransformerLens names and Hugging Face module paths to saelib's (layer, site) and back."""

import pytest

from saelib.errors import BadArgument
from saelib.hooks import SITES, hook_name, parse_hook


@pytest.mark.parametrize(
    "name,expected",
    [
        ("blocks.8.hook_resid_post", (8, "resid")),
        ("blocks.0.hook_resid_pre", (0, "resid_pre")),
        ("blocks.11.hook_mlp_out", (11, "mlp_out")),
        ("blocks.3.hook_attn_out", (3, "attn_out")),
        ("model.layers.8", (8, "resid")),
        ("layers.8", (8, "resid")),  # sparsify's hookpoints
        ("layers.4.mlp", (4, "mlp_out")),
        ("gpt_neox.layers.2.attention", (2, "attn_out")),
        ("model.layers.5.self_attn", (5, "attn_out")),
        ("transformer.h.7", (7, "resid")),
    ],
)
def test_parse_hook(name, expected):
    assert parse_hook(name) == expected


@pytest.mark.parametrize("site", SITES)
def test_hook_name_round_trips(site):
    assert parse_hook(hook_name(8, site)) == (8, site)


@pytest.mark.parametrize("name", ["blocks.8.hook_resid_mid", "embed_tokens", "model.layers.x", "blocks.8"])
def test_unknown_names_list_the_accepted_forms(name):
    with pytest.raises(BadArgument, match="blocks.8.hook_resid_pre"):
        parse_hook(name)


def test_hook_name_without_a_layer_and_bad_site():
    assert hook_name(None, "mlp_out") == "hook_mlp_out"
    with pytest.raises(BadArgument, match="Unknown site"):
        hook_name(1, "embed")
