"""Check that SAE Lens reads an SAE saved by saelib and computes the same latents and reconstruction.

Run from the repository root in a venv that has sae-lens installed (saelib does not depend on it;
`saelib.sae` needs only torch and safetensors, which sae-lens brings):
    PYTHONPATH=. python scripts/check_saelens.py runs/<name>/sae [--tokens 512]
Prints the max absolute differences of encode, decode and forward; exits 1 if any exceeds 1e-4
relative to the activations' scale.
"""

import argparse
import sys

import torch
from sae_lens import SAE as SAELensSAE

from saelib.sae import load_sae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sae_dir")
parser.add_argument("--tokens", type=int, default=512)
args = parser.parse_args()

ours = load_sae(args.sae_dir)
theirs = SAELensSAE.load_from_disk(args.sae_dir, device="cpu")
print(f"ours:     {ours}")
print(f"SAE Lens: {type(theirs).__name__} {theirs.cfg.d_in}->{theirs.cfg.d_sae}")

# raw activations of a realistic size: training saw scale * x with mean squared norm d_in
scale = ours.meta.get("norm_scale", 1.0)
torch.manual_seed(0)
raw = (torch.randn(args.tokens, ours.cfg.d_in) / scale + ours.b_dec.detach()).float()
with torch.no_grad():
    ours_latents, their_latents = ours.encode(raw), theirs.encode(raw)
    diffs = {
        "encode": (ours_latents - their_latents).abs().max().item(),
        "decode": (ours.decode(ours_latents, raw) - theirs.decode(ours_latents)).abs().max().item(),
        "forward": (ours(raw) - theirs(raw)).abs().max().item(),
    }
    same_support = torch.equal(ours_latents > 0, their_latents > 0)
    l0 = (ours_latents > 0).float().sum(1).mean().item()
size = raw.abs().max().item()
for name, diff in diffs.items():
    print(f"max |ours - SAE Lens| {name:8} {diff:.3e}")
print(f"same active latents: {same_support}; L0 on these inputs {l0:.1f}; max |raw| {size:.3g}")
ok = same_support and all(diff <= 1e-4 * max(1.0, size) for diff in diffs.values())
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
