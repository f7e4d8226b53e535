"""LM loading, hooks and truncated forwards on tiny random models (plus one test on the real model)."""

import pytest
import torch
from conftest import make_tiny_lm
from tokenizers.processors import TemplateProcessing

from saelib.errors import BadArgument
from saelib.lm import LM, load_lm

TEXTS = ["Dogs are man's best friend.", "London is a major city with many parks and old streets."]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_resid_hook_equals_hidden_states_and_truncation_is_exact(arch):
    lm = make_tiny_lm(arch)
    batch = lm.tokenize(TEXTS)
    with torch.inference_mode():
        hidden = lm.model(**batch, output_hidden_states=True).hidden_states
    for layer in range(lm.n_layers - 1):  # the last hidden state has the final norm applied
        acts = lm.forward_to(batch["input_ids"], batch["attention_mask"], layer, "resid")
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(acts[mask], hidden[layer + 1][mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_forward_stops_after_the_hooked_layer(arch):
    lm = make_tiny_lm(arch)
    ran = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(lm.blocks)]
    batch = lm.tokenize(TEXTS)
    try:
        lm.forward_to(batch["input_ids"], batch["attention_mask"], 1, "mlp_out")
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]  # block 1's MLP raised the stop before block 1 itself returned


@pytest.mark.parametrize("site", ["mlp_out", "attn_out"])
def test_component_sites_sum_into_the_residual(tiny_llama, site):
    """For a sequential block: resid_out = resid_in + attn_out + mlp_out: each site is a real part of it."""
    lm = tiny_llama
    batch = lm.tokenize(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    resid_in = lm.forward_to(ids, mask, 0, "resid")
    resid_out = lm.forward_to(ids, mask, 1, "resid")
    attn = lm.forward_to(ids, mask, 1, "attn_out")
    mlp = lm.forward_to(ids, mask, 1, "mlp_out")
    torch.testing.assert_close(resid_in + attn + mlp, resid_out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_next_token_activations_equal_a_forward_of_prefix_and_token(arch):
    """The prefix runs once into a cache shared by every token read after it: the same activations as a
    full forward of sink + prefix + token, for batches of any size."""
    lm = make_tiny_lm(arch)
    prefix, token_ids = "Dogs are man's best friend.\n", torch.tensor([5, 17, 42, 99, 120])
    acts = lm.next_token_activations(prefix, token_ids, 2, "resid", batch_size=2)
    prefix_ids = lm.token_ids([prefix])[0]
    full = torch.tensor([prefix_ids + [t] for t in token_ids.tolist()])
    expected = lm.forward_to(full, torch.ones_like(full), 2, "resid")[:, -1]
    torch.testing.assert_close(acts, expected, rtol=1e-4, atol=1e-4)


def test_activations_per_text_with_token_strings(tiny_neox):
    out = tiny_neox.activations(TEXTS, layer=2)
    assert len(out.acts) == 2 and out.acts[0].shape[1] == tiny_neox.d_model
    assert [len(a) for a in out.acts] == [len(t) for t in out.tokens] == [len(t) for t in out.token_ids]
    assert out.tokens[0][0] == tiny_neox.sink_token == "<|endoftext|>"  # no BOS: the EOS token is the sink
    assert "".join(out.tokens[0][1:]) == TEXTS[0]  # every word follows it


def test_sink_token_is_prepended_once_and_counts_in_max_length(tiny_llama):
    words = tiny_llama.tokenizer("Dogs are man's best friend.")["input_ids"]
    ids = tiny_llama.token_ids(["Dogs are man's best friend."], max_length=128)[0]
    assert ids == [tiny_llama.sink_id, *words]
    assert len(tiny_llama.token_ids(["Dogs are man's best friend."], max_length=3)[0]) == 3


def test_a_tokenizer_that_adds_bos_gets_no_second_sink():
    lm = make_tiny_lm("llama")
    tokenizer = lm.tokenizer
    tokenizer.bos_token = "<|endoftext|>"
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.bos_token_id)]
    )
    relabelled = LM.from_model(lm.model, tokenizer)
    assert relabelled.sink_id is None and relabelled.sink_token == "<|endoftext|>"
    ids = relabelled.token_ids(["Dogs run."])[0]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_default_layer_is_the_middle_one(tiny_llama):
    assert tiny_llama.resolve(None) == (tiny_llama.n_layers // 2, "resid")


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_resid_pre_is_the_previous_blocks_output_and_the_embeddings_at_0(arch):
    lm = make_tiny_lm(arch)
    batch = lm.tokenize(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        hidden = lm.model(**batch, output_hidden_states=True).hidden_states
    real = mask.bool()
    torch.testing.assert_close(lm.forward_to(ids, mask, 0, "resid_pre")[real], hidden[0][real])
    for layer in range(1, lm.n_layers):
        pre = lm.forward_to(ids, mask, layer, "resid_pre")
        torch.testing.assert_close(pre, lm.forward_to(ids, mask, layer - 1, "resid"))


@pytest.mark.parametrize(
    "name,layer,site",
    [
        ("blocks.2.hook_resid_pre", 2, "resid_pre"),
        ("blocks.1.hook_resid_post", 1, "resid"),
        ("blocks.1.hook_mlp_out", 1, "mlp_out"),
        ("model.layers.1", 1, "resid"),
    ],
)
def test_activations_at_a_hook_name_equal_layer_and_site(tiny_llama, name, layer, site):
    assert tiny_llama.resolve(name) == (layer, site)
    named = tiny_llama.activations(TEXTS, name).acts
    for a, b in zip(named, tiny_llama.activations(TEXTS, layer=layer, site=site).acts):
        assert torch.equal(a, b)


def test_a_hook_name_with_another_site_is_refused(tiny_llama):
    with pytest.raises(BadArgument, match="resid_pre"):
        tiny_llama.activations(TEXTS, "blocks.1.hook_resid_pre", site="mlp_out")
    assert tiny_llama.resolve("blocks.1.hook_resid_pre", "resid_pre") == (1, "resid_pre")


def test_hooked_resid_pre_replaces_the_input_of_the_block(tiny_llama):
    lm = tiny_llama
    batch = lm.tokenize(TEXTS)
    with lm.hooked(2, "resid_pre", torch.zeros_like):
        at_input = lm.logits(batch["input_ids"], batch["attention_mask"])
    with lm.hooked(1, "resid", torch.zeros_like):
        at_output = lm.logits(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(at_input, at_output)
    assert not torch.allclose(at_input, lm.logits(batch["input_ids"], batch["attention_mask"]))


def test_hooked_replaces_the_activation_and_is_removed(tiny_llama):
    lm = tiny_llama
    batch = lm.tokenize(TEXTS)
    clean = lm.logits(batch["input_ids"], batch["attention_mask"])
    with lm.hooked(1, "resid", torch.zeros_like):
        ablated = lm.logits(batch["input_ids"], batch["attention_mask"])
    again = lm.logits(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(clean, again)


@pytest.mark.parametrize(
    "layer,site,match",
    [(99, "resid", "out of range"), (-1, "resid", "out of range"), (1, "embed", "Unknown site")],
)
def test_bad_layer_or_site(tiny_llama, layer, site, match):
    with pytest.raises(BadArgument, match=match):
        tiny_llama.activations(TEXTS, layer=layer, site=site)


def test_empty_text_is_rejected(tiny_llama):
    with pytest.raises(BadArgument, match="Empty text"):
        tiny_llama.activations(["fine", "  "])


@pytest.mark.parametrize("offline", ["1", "0"])
def test_unknown_model_fails_fast_with_a_clear_message(monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    with pytest.raises(BadArgument, match='load_lm\\("default"\\)'):
        load_lm("no-such-org/no-such-model-xyz")


def test_local_directory_loads(tmp_path, tiny_gpt2):
    tiny_gpt2.model.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path))
    assert lm.n_layers == tiny_gpt2.n_layers and lm.d_model == tiny_gpt2.d_model
    assert lm.load_seconds > 0 and tiny_gpt2.load_seconds is None  # built in code, not loaded


def test_real_bundled_model():
    lm = load_lm("default")
    assert lm.d_model == 576 and lm.n_layers == 30
    assert "Paris" in lm.generate("The capital of France is", max_new_tokens=5)
    assert lm.unembed().shape[1] == 576


def test_device_map_spreads_the_model_and_hooks_still_work(tmp_path, tiny_llama):
    """device_map goes to from_pretrained: here blocks 2-3 are offloaded to disk (as accelerate does with a
    model larger than the devices); activations at an offloaded block, and logits, match the plain model."""
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    where = {f"model.layers.{i}": "cpu" if i < 2 else "disk" for i in range(4)}
    where.update(
        {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    )
    mapped = load_lm(str(tmp_path), device_map=where, precision="float32")  # compared with a float32 model
    assert mapped.model.hf_device_map["model.layers.3"] == "disk" and mapped.device == torch.device("cpu")
    batch = tiny_llama.tokenize(TEXTS)
    for layer in (1, 3):
        expected = tiny_llama.forward_to(batch["input_ids"], batch["attention_mask"], layer)
        torch.testing.assert_close(
            mapped.forward_to(batch["input_ids"], batch["attention_mask"], layer), expected
        )
    torch.testing.assert_close(mapped.logits(**batch), tiny_llama.logits(**batch))


def test_bad_device_fails_before_loading():
    with pytest.raises(BadArgument, match="Unknown device"):
        load_lm("no/such/model", device="gpu")


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize(("layer", "site"), [(0, "resid"), (2, "resid"), (3, "resid_pre"), (2, "mlp_out")])
def test_intervened_logits_skip_the_early_blocks_and_equal_full_forwards(arch, layer, site):
    lm = make_tiny_lm(arch)
    batch = lm.tokenize(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    fns = [None, torch.zeros_like, lambda acts: 2 * acts]
    calls = []
    hook = lm.blocks[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    got = list(lm.intervened_logits(ids, mask, layer, site, fns))
    hook.remove()
    expected = [lm.logits(ids, mask)]
    for fn in fns[1:]:
        with lm.hooked(layer, site, fn):
            expected.append(lm.logits(ids, mask))
    for logits, want in zip(got, expected, strict=True):
        torch.testing.assert_close(logits, want)
    assert not torch.allclose(got[0], got[1])
    assert len(calls) == (1 if layer else 3)  # block 0 ran in the first pass only
    assert all("forward" not in vars(block) for block in lm.blocks)  # restored
    torch.testing.assert_close(lm.logits(ids, mask), expected[0])


def test_text_pieces_keep_characters_split_over_byte_tokens(tiny_llama):
    """'¿' and 'ó' are two byte-level tokens each in the tiny vocabulary: each decodes to U+FFFD alone, so a
    text's pieces show the whole character on the token that completes it and read as the text."""
    text = "Perdón, ¿puede hablar?"
    ids = tiny_llama.tokenizer(text)["input_ids"]
    assert sum("\ufffd" in piece for piece in tiny_llama.token_strings(ids)) == 4
    pieces = tiny_llama.text_pieces(ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert pieces.count("") == 2 and "¿" in pieces and "ó" in pieces
    assert "".join(tiny_llama.activations([text]).tokens[0][1:]) == text  # after the sink token
    assert tiny_llama.text_pieces(ids[:4])[-1] == ""  # a window that ends inside 'ó' shows nothing of it
    starts_inside = tiny_llama.text_pieces(ids[4:])  # a window that starts inside 'ó' keeps the stray byte
    assert "".join(starts_inside) == "\ufffd" + text[5:]
