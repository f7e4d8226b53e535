"""Logit lens, steering and ablation on the tiny LM with hand-set decoder directions."""

from __future__ import annotations

import pytest
import torch
from conftest import random_sae

from saelib import analysis
from saelib.corpus import load_concepts
from saelib.errors import BadArgument

LAYER = 1


@pytest.fixture(scope="module")
def sae(text_sae):
    return text_sae


def test_logit_lens_recovers_planted_token_direction(tiny_llama):
    unembed = tiny_llama.unembed()
    norm = analysis.final_norm_weight(tiny_llama)
    assert norm is not None and norm.shape == (tiny_llama.d_model,)
    sae = random_sae("relu", tiny_llama.d_model, 8, layer=LAYER)
    target = 123
    with torch.no_grad():
        sae.W_dec[3] = unembed[target] / norm - 0.5 * unembed[7] / norm
    lens = analysis.logit_lens(tiny_llama, sae, 3, k=5)
    promoted = [t for t, _ in lens.promoted]
    assert promoted[0] == tiny_llama.token_strings([target])[0]
    assert lens.suppressed[0][0] == tiny_llama.token_strings([7])[0]
    assert lens.promoted[0][1] > 0 > lens.suppressed[0][1]
    assert "promotes" in lens._repr_html_() and "suppresses" in repr(lens)
    with pytest.raises(BadArgument, match="out of range"):
        analysis.logit_lens(tiny_llama, sae, -1)
    with pytest.raises(BadArgument, match="k must be in 1.."):
        analysis.logit_lens(tiny_llama, sae, 3, k=0)


def test_logit_lens_is_none_without_unembedding(tiny_llama, sae, monkeypatch):
    monkeypatch.setattr(tiny_llama, "unembed", lambda: None)
    assert analysis.logit_lens(tiny_llama, sae, 0) is None


def test_steering_changes_generation_and_zero_alpha_does_not(tiny_llama, sae):
    prompt = "Dogs are"
    unchanged = analysis.steer(tiny_llama, sae, prompt, feature=0, alpha=0.0, max_new_tokens=6)
    assert unchanged.before == unchanged.after
    steered = analysis.steer(tiny_llama, sae, prompt, feature=0, alpha=200.0, max_new_tokens=6)
    assert steered.before == unchanged.before and steered.after != steered.before
    assert "f0 += 200" in steered._repr_html_() and "f0 += 200" in repr(steered)
    with pytest.raises(BadArgument, match="out of range"):
        analysis.steer(tiny_llama, sae, "Hello", feature=500, alpha=1.0)
    with pytest.raises(BadArgument, match="alpha must be a finite number"):
        analysis.steer(tiny_llama, sae, "Hello", feature=0, alpha=float("inf"))


def test_ablation_subtracts_exactly_that_features_contribution(tiny_llama, sae):
    acts = tiny_llama.activations(["Neural networks process information."], layer=LAYER).acts[0]
    feature = int(sae.encode(acts).sum(0).argmax())
    expected = acts - sae.encode(acts)[:, feature : feature + 1] * sae.W_dec[feature]
    assert torch.allclose(analysis.ablation_hook(sae, feature)(acts), expected.detach(), atol=1e-6)
    steered = analysis.steering_hook(sae, feature, 2.0)(acts)
    assert torch.allclose(steered, acts + 2.0 * sae.W_dec[feature].detach())


def test_ablating_a_silent_feature_keeps_the_text_and_a_loud_one_changes_it(tiny_llama):
    sae = random_sae("relu", tiny_llama.d_model, 8, scale=5.0, b_enc=-1.0, layer=LAYER)
    with torch.no_grad():
        sae.b_enc[2] = -1e6  # never fires
        sae.W_enc[:, 5], sae.b_enc[5] = 0.0, 1.0  # fires at 1.0 on every token...
        sae.b_dec.zero_()
        sae.W_dec[5] = 50.0 * tiny_llama.unembed()[11]  # ...and dominates the residual stream
    quiet = analysis.ablate(tiny_llama, sae, "Dogs are", feature=2, max_new_tokens=6)
    assert quiet.after == quiet.before
    loud = analysis.ablate(tiny_llama, sae, "Dogs are", feature=5, max_new_tokens=6)
    assert loud.after != loud.before and loud.intervention == "f5 zeroed"


def test_unprintable_tokens_are_shown_escaped():
    from saelib.html import printable_token

    assert printable_token("\u0bcd") == "'\\u0bcd'" and printable_token("\ufe0f") == "'\\ufe0f'"
    assert printable_token(" the") == "' the'" and printable_token("\n") == "'\\n'"


def test_steering_names_the_concept_and_says_when_nothing_changed(tiny_llama, sae):
    labels = {0: "animals"}
    unchanged = analysis.steer(tiny_llama, sae, "Dogs are", 0, alpha=0.0, max_new_tokens=4, labels=labels)
    assert unchanged.intervention == "f0 (animals) += 0" and not unchanged.changed
    assert "changed nothing" in repr(unchanged) and "changed nothing" in unchanged._repr_html_()
    before_line, after_line = repr(unchanged).splitlines()[1:3]
    assert before_line.index("'") == after_line.index("'")  # the two continuations start in one column
    zeroed = analysis.ablate(tiny_llama, sae, "Dogs are", 0, max_new_tokens=4, labels=labels)
    assert zeroed.intervention == "f0 (animals) zeroed"


def test_continuation_logprob_is_the_mean_over_the_texts_tokens(tiny_llama):
    prompt, text = "Dogs are", "man's best friend."
    ids = tiny_llama.token_ids(prompt)[0]
    cont = tiny_llama.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    logits = tiny_llama.logits(torch.tensor([ids + cont]))[0].log_softmax(-1)
    expected = sum(float(logits[len(ids) - 1 + i, t]) for i, t in enumerate(cont)) / len(cont)
    assert analysis.continuation_logprob(tiny_llama, prompt, [text]) == pytest.approx(expected, abs=1e-5)


def test_steering_sweep_measures_each_alpha_against_no_steering(tiny_llama, sae):
    alphas = [0.0, 2.0, 50.0]
    sweep = analysis.steering_sweep(tiny_llama, sae, "Dogs are", 3, "animals", alphas=alphas, n_texts=3)
    animals = [d.text for d in load_concepts("heldout") if d.concept == "animals"][:3]
    assert sweep.n_texts == 3 and sweep.name == "f3 (animals)"
    assert sweep.logprobs[0] == pytest.approx(analysis.continuation_logprob(tiny_llama, "Dogs are", animals))
    assert len(set(sweep.logprobs)) == 3  # steering moved the log-prob
    assert sweep.best_alpha == sweep.alphas[sweep.logprobs.index(max(sweep.logprobs))]
    assert sweep.gain == max(sweep.logprobs) - sweep.logprobs[0] >= 0
    assert "best alpha" in repr(sweep) and "<img" in sweep._repr_html_()
    with pytest.raises(BadArgument, match="include 0.0"):
        analysis.steering_sweep(tiny_llama, sae, "Dogs are", 3, "animals", alphas=[1.0])
    with pytest.raises(BadArgument, match="No held-out sentences"):
        analysis.steering_sweep(tiny_llama, sae, "Dogs are", 3, "no such concept", alphas=[0.0])
