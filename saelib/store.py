"""Read side of an activation store: sharded safetensors on disk plus a JSON manifest.

A store folder holds manifest.json (settings, per-shard entries, statistics), documents.jsonl (one
{"text": ...} per document) and shard-NNNNN.safetensors files with the columns of `Shard`.
`saelib.collection.collect` writes it. Reading streams shards, so memory stays flat however large the
store grows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from saelib.corpus import read_jsonl
from saelib.errors import BadArgument, BadFile

# 2: every text starts with the LM's sink token, so dropping position 0 drops no word (1 dropped the first)
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
DOCUMENTS_FILE = "documents.jsonl"
EVAL_EVERY = 20  # documents whose index % 20 == 19 form the eval split
SPLITS = ("train", "eval")
SHUFFLE_BUFFER_SHARDS = 4


@dataclass
class Shard:
    acts: Tensor  # [n, d_model] float32
    token_ids: Tensor  # [n] int64
    doc: Tensor  # [n] int64, index into the store's documents
    pos: Tensor  # [n] int64, token position in its document
    offset: int  # global row index of the first row


def open_store(path: str | os.PathLike) -> ActivationStore:
    """Open a finished store (a run dir or its activations/ folder)."""
    path = Path(path)
    if not (path / MANIFEST_FILE).exists() and (path / "activations" / MANIFEST_FILE).exists():
        path = path / "activations"
    return ActivationStore(path)


class ActivationStore:
    """Read side of a store: statistics, streaming shards, shuffled batches, token contexts."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.exists():
            raise BadFile(f"No activation store at {self.path} ({MANIFEST_FILE} missing); run saelib.collect")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise self._damaged(f"{manifest_path} is corrupt ({err})") from err
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise self._damaged(
                f"{self.path} was collected by an older saelib (format "
                f"{self.manifest.get('format_version')}, now {FORMAT_VERSION}) that left out the first word "
                "of every text"
            )
        if not self.manifest.get("complete"):
            raise BadFile(
                f"The collection in {self.path} is unfinished; rerun saelib.collect with the same "
                "arguments to resume it"
            )
        for entry in self.manifest["shards"]:
            if not (self.path / entry["file"]).exists():
                raise self._damaged(f"{self.path / entry['file']} is missing")
        m = self.manifest
        self.n_tokens, self.d_model, self.model_name = m["n_tokens"], m["d_model"], m["model"]
        self.layer, self.site = m["layer"], m["site"]
        self.sink_token = m.get("sink_token")  # None for a store made from a tensor
        self.mean = torch.tensor(m["mean"], dtype=torch.float32)
        self.mean_norm, self.mean_sq_norm = m["mean_norm"], m["mean_sq_norm"]
        self._offsets = [0]
        for entry in m["shards"]:
            self._offsets.append(self._offsets[-1] + entry["n_tokens"])
        self._cached_shard: tuple[int, Shard] | None = None

    def _damaged(self, problem: str) -> BadFile:
        return BadFile(f"{problem}; delete {self.path} and collect again")

    def __repr__(self) -> str:
        return (
            f"ActivationStore({self.path}: {self.n_tokens:,} tokens x {self.d_model} from {self.model_name}, "
            f"layer {self.layer} {self.site}, {len(self.manifest['shards'])} shards)"
        )

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def collect_seconds(self) -> float:
        """Seconds spent running the model and writing the shards, summed over every run that wrote them
        (so a resumed collection still reports its whole cost)."""
        return sum(entry["seconds"] for entry in self.manifest["shards"])

    def documents(self, split: str | None = None) -> list[str]:
        texts = [row["text"] for _, row in read_jsonl(self.path / DOCUMENTS_FILE, ("text",))]
        if split is None:
            return texts
        keep = self.split_mask(torch.arange(len(texts)), split)
        return [t for t, k in zip(texts, keep.tolist()) if k]

    @staticmethod
    def split_mask(doc: Tensor, split: str | None) -> Tensor:
        """Which rows (by document index) belong to `split` ("train", "eval" or None for all)."""
        if split is None:
            return torch.ones_like(doc, dtype=torch.bool)
        if split not in SPLITS:
            raise BadArgument(f"split must be 'train', 'eval' or None, not {split!r}")
        is_eval = doc % EVAL_EVERY == EVAL_EVERY - 1
        return is_eval if split == "eval" else ~is_eval

    def count_tokens(self, split: str | None) -> int:
        """Rows in `split`, reading only each shard's small `doc` column."""
        total = 0
        for entry in self.manifest["shards"]:
            with safe_open(str(self.path / entry["file"]), framework="pt") as shard:
                total += int(self.split_mask(shard.get_tensor("doc").long(), split).sum())
        return total

    def load_shard(self, index: int, as_float: bool = True) -> Shard:
        """Shard `index`, its activations as float32 (as_float) or as stored (float16 / bfloat16)."""
        entry = self.manifest["shards"][index]
        file = self.path / entry["file"]
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise self._damaged(f"{file} is corrupt or truncated ({err})") from err
        if tensors["acts"].shape != (entry["n_tokens"], self.d_model):
            shape, expected = tuple(tensors["acts"].shape), (entry["n_tokens"], self.d_model)
            raise self._damaged(f"{file} has shape {shape}, expected {expected}")
        return Shard(
            acts=tensors["acts"].float() if as_float else tensors["acts"],
            token_ids=tensors["token_ids"].long(),
            doc=tensors["doc"].long(),
            pos=tensors["pos"].long(),
            offset=self._offsets[index],
        )

    def shards(self) -> Iterator[Shard]:
        for i in range(len(self.manifest["shards"])):
            yield self.load_shard(i)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        split: str | None = "train",
        skip_batches: int = 0,
    ) -> Iterator[Tensor]:
        """One pass of float32 batches [batch_size, d_model] (last one may be smaller).

        Shuffling reads a few random shards at a time and permutes their rows: memory is bounded by
        SHUFFLE_BUFFER_SHARDS shards, and the order depends only on `seed`.
        """
        if batch_size < 1:
            raise BadArgument(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
        group = SHUFFLE_BUFFER_SHARDS if shuffle else 1
        parts: list[Tensor] = []  # rows left over from the last group, then the next group's
        n_batch = 0
        for g in range(0, n_shards, group):
            for i in order[g : g + group]:
                shard = self.load_shard(i, as_float=False)  # the pool stays in the stored dtype
                parts.append(shard.acts[self.split_mask(shard.doc, split)])
            pool = torch.cat(parts)
            rows = torch.randperm(len(pool), generator=gen) if shuffle else torch.arange(len(pool))
            n_full = len(pool) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                if n_batch >= skip_batches:  # gathered batch by batch: no permuted copy of the pool
                    yield pool[rows[start : start + batch_size]].float()
                n_batch += 1
            parts = [pool[rows[n_full:]]]
        if parts and len(parts[0]) and n_batch >= skip_batches:
            yield parts[0].float()

    def context(self, row: int, before: int = 12, after: int = 4) -> tuple[list[int], int]:
        """Token ids around global `row` within its document, and where that token sits in the window."""
        if not 0 <= row < self.n_tokens:
            raise BadArgument(f"row {row} out of range 0..{self.n_tokens - 1}")
        index = next(i for i in range(len(self._offsets) - 1) if row < self._offsets[i + 1])
        if self._cached_shard is None or self._cached_shard[0] != index:
            self._cached_shard = (index, self.load_shard(index))
        shard = self._cached_shard[1]
        local = row - shard.offset
        same_doc = (shard.doc == shard.doc[local]).nonzero().squeeze(1)
        lo = max(int(same_doc[0]), local - before)
        hi = min(int(same_doc[-1]) + 1, local + after + 1)
        return shard.token_ids[lo:hi].tolist(), local - lo
