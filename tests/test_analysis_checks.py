"""The shared input checks raise BadArgument (a ValueError) with a message that names the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saelib import analysis
from saelib.errors import BadArgument


def test_checks_accept_good_values_and_normalise_them():
    assert analysis.check_feature(np.int64(3), 4) == 3 and isinstance(
        analysis.check_feature(np.int64(3), 4), int
    )
    assert analysis.check_threshold(0) == 0.0
    assert analysis.check_top_k(4, 4) == 4
    assert analysis.check_texts("one text") == ["one text"]
    assert torch.equal(analysis.check_density([0.0, 0.5], 2), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: analysis.check_feature(4, 4), r"feature 4 is out of range: this SAE has features 0..3"),
        (lambda: analysis.check_feature(True, 4), "out of range"),
        (lambda: analysis.check_feature(1.0, 4), "out of range"),
        (lambda: analysis.check_threshold(float("nan")), "threshold must be a finite number >= 0"),
        (lambda: analysis.check_threshold(-1), "threshold must be"),
        (lambda: analysis.check_top_k(0, 4), r"top_k must be an integer in 1..4"),
        (lambda: analysis.check_texts([]), "Empty text"),
        (lambda: analysis.check_texts(["ok", " "]), "Empty text"),
        (lambda: analysis.check_density([0.1], 2), r"one firing frequency in \[0, 1\] per latent \(2\)"),
        (lambda: analysis.check_density([0.1, -1.0], 2), "density must hold"),
    ],
)
def test_checks_reject_bad_values(call, message):
    with pytest.raises(BadArgument, match=message):
        call()
