"""Activation store: sharded safetensors on disk plus a JSON manifest.

Collection writes one shard at a time (temp name, then rename) and records it in the manifest, so
an interrupted run resumes at the next shard and ends byte-identical to an uninterrupted one.
Reading streams shards, so memory stays flat however large the store grows.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from saelib.atomic import save_tensors, write_json, write_text

FORMAT_VERSION = 1
EVAL_EVERY = 20  # documents whose index % 20 == 19 form the eval split
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SHUFFLE_BUFFER_SHARDS = 4


@dataclass
class Shard:
    acts: Tensor  # [n, d_model] float32
    token_ids: Tensor  # [n] int64
    doc: Tensor  # [n] int64, index into the store's documents
    pos: Tensor  # [n] int64, token position in its document
    offset: int  # global row index of the first row


def _doc_text(doc) -> str:
    return doc if isinstance(doc, str) else doc.text


def _doc_record(doc) -> dict:
    if isinstance(doc, str):
        return {"text": doc}
    return {"text": doc.text, "source": doc.source, "concept": doc.concept}


def _plan_shards(lengths: list[int], shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive document ranges [start, stop) holding about `shard_tokens` stored tokens each."""
    plan, start, count = [], 0, 0
    for i, n in enumerate(lengths):
        count += n
        if count >= shard_tokens:
            plan.append((start, i + 1))
            start, count = i + 1, 0
    if start < len(lengths):
        plan.append((start, len(lengths)))
    return plan


def _shard_stats(acts: Tensor) -> dict:
    acts64 = acts.double()
    norms = acts64.norm(dim=1)
    return {"sum": acts64.sum(0).tolist(), "sum_norm": norms.sum().item(), "sum_sq_norm": (norms**2).sum().item()}


def collect(
    lm,
    corpus: Sequence,
    out_dir: str | os.PathLike,
    layer: int | None = None,
    site: str = "resid",
    max_tokens_per_text: int = 128,
    dtype: str = "float16",
    drop_first_token: bool = True,
    massive_ratio: float | None = 10.0,
    shard_tokens: int = 16384,
    batch_size: int = 16,
    corpus_spec: dict | str | None = None,
    progress: bool = True,
) -> "ActivationStore":
    """Run `corpus` (texts or Documents) through `lm` and store activations at (layer, site).

    The first token of each text is an attention sink with a norm ~100x the rest; it would dominate
    the SAE's MSE, so it is left out unless `drop_first_token=False`. A few other tokens carry such
    "massive activations" too (a second sink, often at position 1): tokens whose norm exceeds
    `massive_ratio` x the batch's median norm are left out as well (None keeps them).
    """
    layer = lm.resolve(layer, site)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; use one of {list(DTYPES)}")
    docs = list(corpus)
    if not docs:
        raise ValueError("Empty corpus: pass at least one text (e.g. saelib.load_corpus('builtin'))")
    texts = [_doc_text(d) for d in docs]
    if any(not t or not t.strip() for t in texts):
        raise ValueError("The corpus contains empty texts; drop them before collecting")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records = [_doc_record(d) for d in docs]
    docs_hash = hashlib.sha256(json.dumps(records).encode()).hexdigest()
    settings = {
        "format_version": FORMAT_VERSION, "model": lm.name, "layer": layer, "site": site, "d_model": lm.d_model,
        "dtype": dtype, "max_tokens_per_text": max_tokens_per_text, "drop_first_token": drop_first_token,
        "massive_ratio": massive_ratio,
        "shard_tokens": shard_tokens, "n_documents": len(docs), "documents_sha256": docs_hash,
        "corpus_spec": corpus_spec, "eval_split": f"document index % {EVAL_EVERY} == {EVAL_EVERY - 1}",
    }
    manifest_path = out / "manifest.json"
    manifest = {**settings, "complete": False, "shards": []}
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        changed = [k for k in settings if previous.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"{out} already holds a collection made with different settings ({', '.join(changed)}); "
                "pick another out_dir or delete this one"
            )
        manifest["shards"] = previous["shards"]
    docs_path = out / "documents.jsonl"
    if not docs_path.exists():
        write_text(docs_path, "".join(json.dumps(r) + "\n" for r in records))

    input_ids = lm.tokenizer(texts, truncation=True, max_length=max_tokens_per_text)["input_ids"]
    skip = 1 if drop_first_token else 0
    kept = [max(len(ids) - skip, 0) for ids in input_ids]
    plan = _plan_shards(kept, shard_tokens)
    done = len(manifest["shards"])
    for i, entry in enumerate(manifest["shards"]):
        if (entry["doc_start"], entry["doc_stop"]) != plan[i] or not (out / entry["file"]).exists():
            raise ValueError(f"{out} is inconsistent (shard {i}); delete it and collect again")

    bar = tqdm(total=sum(kept), initial=sum(kept[: plan[done - 1][1]]) if done else 0, unit="tok",
               desc=f"collect L{layer} {site}", disable=not progress)
    start_time, n_new = time.perf_counter(), 0
    for shard_index in range(done, len(plan)):
        doc_start, doc_stop = plan[shard_index]
        rows = _run_shard(lm, input_ids, doc_start, doc_stop, layer, site, skip, massive_ratio, batch_size, bar)
        acts = rows["acts"].to(DTYPES[dtype])
        name = f"shard-{shard_index:05d}.safetensors"
        save_tensors({"acts": acts.contiguous(), "token_ids": rows["token_ids"], "doc": rows["doc"], "pos": rows["pos"]},
                     out / name)
        n_new += len(acts)
        manifest["shards"].append({"file": name, "n_tokens": len(acts), "doc_start": doc_start, "doc_stop": doc_stop,
                                   "n_massive_dropped": rows["n_massive"], **_shard_stats(acts.float())})
        write_json(manifest_path, manifest)
    bar.close()
    seconds = time.perf_counter() - start_time

    shards = manifest["shards"]
    n_tokens = sum(s["n_tokens"] for s in shards)
    if n_tokens == 0:
        raise ValueError("No tokens collected: every text was a single token; use longer texts")
    manifest.update(
        complete=True, n_tokens=n_tokens,
        mean=(torch.tensor([s["sum"] for s in shards], dtype=torch.float64).sum(0) / n_tokens).tolist(),
        mean_norm=sum(s["sum_norm"] for s in shards) / n_tokens,
        mean_sq_norm=sum(s["sum_sq_norm"] for s in shards) / n_tokens,
    )
    write_json(manifest_path, manifest)
    store = ActivationStore(out)
    store.collect_seconds, store.collected_tokens = seconds, n_new
    return store


def padded_batches(input_ids: list[list[int]], docs, batch_size: int, pad_id: int):
    """Yield (doc indices, ids, mask) with documents sorted by length so padding stays small."""
    order = sorted(docs, key=lambda i: len(input_ids[i]))
    for b in range(0, len(order), batch_size):
        batch_docs = order[b : b + batch_size]
        width = max(len(input_ids[i]) for i in batch_docs)
        ids = torch.full((len(batch_docs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch_docs):
            ids[row, : len(input_ids[i])] = torch.tensor(input_ids[i])
            mask[row, : len(input_ids[i])] = 1
        yield batch_docs, ids, mask


def massive_mask(norms: Tensor, ratio: float | None, reference: Tensor | None = None) -> Tensor:
    """Tokens whose norm exceeds `ratio` x the median of `reference` (default: of `norms` themselves)."""
    if ratio is None or norms.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    return norms > ratio * (norms if reference is None else reference).median()


def _run_shard(lm, input_ids, doc_start, doc_stop, layer, site, skip, massive_ratio, batch_size, bar) -> dict:
    """Activations of documents [doc_start, doc_stop), in document order; batches sorted by length."""
    per_doc, positions = {}, {}
    for batch_docs, ids, mask in padded_batches(input_ids, range(doc_start, doc_stop), batch_size,
                                                lm.tokenizer.pad_token_id):
        acts = lm.forward_to(ids.to(lm.device), mask.to(lm.device), layer, site).cpu()
        if not torch.isfinite(acts).all():
            raise ValueError(f"The model produced NaN/inf activations at layer {layer} ({site}); "
                             "load it in float32 or pick another layer")
        rows = [acts[row, skip : len(input_ids[i])] for row, i in enumerate(batch_docs)]
        median_from = torch.cat(rows).norm(dim=1)
        for i, doc_acts in zip(batch_docs, rows):
            keep = ~massive_mask(doc_acts.norm(dim=1), massive_ratio, median_from)
            per_doc[i], positions[i] = doc_acts[keep], torch.arange(skip, len(input_ids[i]))[keep]
            bar.update(len(doc_acts))
    doc_ids = list(range(doc_start, doc_stop))
    return {
        "acts": torch.cat([per_doc[i] for i in doc_ids]) if doc_ids else torch.zeros(0, lm.d_model),
        "token_ids": torch.cat([torch.tensor(input_ids[i], dtype=torch.int32)[positions[i]] for i in doc_ids]),
        "doc": torch.cat([torch.full((len(per_doc[i]),), i, dtype=torch.int32) for i in doc_ids]),
        "pos": torch.cat([positions[i] for i in doc_ids]).int(),
        "n_massive": sum(len(input_ids[i]) - skip - len(positions[i]) for i in doc_ids),
    }


def store_from_tensor(acts: Tensor, out_dir, shard_tokens: int = 16384, model_name: str = "synthetic",
                      layer: int = 0, site: str = "resid") -> "ActivationStore":
    """A valid store from an in-memory [n, d] tensor (documents of 64 rows) for tests and experiments."""
    if acts.ndim != 2 or len(acts) == 0:
        raise ValueError(f"acts must be a non-empty [n_tokens, d] tensor, got shape {tuple(acts.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, d = acts.shape
    rows = torch.arange(n)
    manifest = {"format_version": FORMAT_VERSION, "model": model_name, "layer": layer, "site": site, "d_model": d,
                "dtype": "float32", "drop_first_token": False, "shard_tokens": shard_tokens,
                "n_documents": (n + 63) // 64, "corpus_spec": "tensor", "shards": []}
    for i, start in enumerate(range(0, n, shard_tokens)):
        chunk = acts[start : start + shard_tokens].float().contiguous()
        idx = rows[start : start + shard_tokens]
        name = f"shard-{i:05d}.safetensors"
        save_tensors({"acts": chunk, "token_ids": torch.zeros(len(chunk), dtype=torch.int32),
                      "doc": (idx // 64).int(), "pos": (idx % 64).int()}, out / name)
        manifest["shards"].append({"file": name, "n_tokens": len(chunk), "doc_start": int(idx[0] // 64),
                                   "doc_stop": int(idx[-1] // 64) + 1, **_shard_stats(chunk)})
    docs = "".join(json.dumps({"text": f"synthetic document {i}"}) + "\n" for i in range(manifest["n_documents"]))
    write_text(out / "documents.jsonl", docs)
    norms = acts.double().norm(dim=1)
    manifest.update(complete=True, n_tokens=n, mean=acts.double().mean(0).tolist(),
                    mean_norm=norms.mean().item(), mean_sq_norm=(norms**2).mean().item())
    write_json(out / "manifest.json", manifest)
    return ActivationStore(out)


def open_store(path: str | os.PathLike) -> "ActivationStore":
    """Open a finished store (a run dir or its activations/ folder)."""
    path = Path(path)
    if not (path / "manifest.json").exists() and (path / "activations" / "manifest.json").exists():
        path = path / "activations"
    return ActivationStore(path)


class ActivationStore:
    """Read side of a store: statistics, streaming shards, shuffled batches, token contexts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise ValueError(f"No activation store at {self.path} (manifest.json missing); run saelib.collect first")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path} is corrupt ({err}); delete {self.path} and collect again") from err
        if not self.manifest.get("complete"):
            raise ValueError(f"The collection in {self.path} is unfinished; rerun saelib.collect with the same "
                             "arguments to resume it")
        for entry in self.manifest["shards"]:
            if not (self.path / entry["file"]).exists():
                raise ValueError(f"{self.path / entry['file']} is missing; delete {self.path} and collect again")
        m = self.manifest
        self.n_tokens, self.d_model, self.layer, self.site, self.model_name = (
            m["n_tokens"], m["d_model"], m["layer"], m["site"], m["model"])
        self.mean = torch.tensor(m["mean"], dtype=torch.float32)
        self.mean_norm, self.mean_sq_norm = m["mean_norm"], m["mean_sq_norm"]
        self._offsets = [0]
        for entry in m["shards"]:
            self._offsets.append(self._offsets[-1] + entry["n_tokens"])
        self._cached_shard: tuple[int, Shard] | None = None

    def __repr__(self) -> str:
        return (f"ActivationStore({self.path}: {self.n_tokens:,} tokens x {self.d_model} from {self.model_name}, "
                f"layer {self.layer} {self.site}, {len(self.manifest['shards'])} shards)")

    def __len__(self) -> int:
        return self.n_tokens

    def documents(self, split: str | None = None) -> list[str]:
        texts = [json.loads(line)["text"] for line in (self.path / "documents.jsonl").read_text().splitlines()]
        if split is None:
            return texts
        keep = self.split_mask(torch.arange(len(texts)), split)
        return [t for t, k in zip(texts, keep.tolist()) if k]

    @staticmethod
    def split_mask(doc: Tensor, split: str | None) -> Tensor:
        """Which rows (by document index) belong to `split`."""
        if split is None:
            return torch.ones_like(doc, dtype=torch.bool)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train', 'eval' or None, not {split!r}")
        is_eval = doc % EVAL_EVERY == EVAL_EVERY - 1
        return is_eval if split == "eval" else ~is_eval

    def count_tokens(self, split: str | None) -> int:
        """Rows in `split`, reading only each shard's small `doc` column."""
        total = 0
        for entry in self.manifest["shards"]:
            with safe_open(str(self.path / entry["file"]), framework="pt") as shard:
                total += int(self.split_mask(shard.get_tensor("doc").long(), split).sum())
        return total

    def load_shard(self, index: int) -> Shard:
        entry = self.manifest["shards"][index]
        file = self.path / entry["file"]
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file} is corrupt or truncated ({err}); delete {self.path} and collect again") from err
        if tensors["acts"].shape != (entry["n_tokens"], self.d_model):
            raise ValueError(f"{file} has shape {tuple(tensors['acts'].shape)}, expected "
                             f"({entry['n_tokens']}, {self.d_model}); delete {self.path} and collect again")
        return Shard(acts=tensors["acts"].float(), token_ids=tensors["token_ids"].long(), doc=tensors["doc"].long(),
                     pos=tensors["pos"].long(), offset=self._offsets[index])

    def shards(self) -> Iterator[Shard]:
        for i in range(len(self.manifest["shards"])):
            yield self.load_shard(i)

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, split: str | None = "train",
                     skip_batches: int = 0) -> Iterator[Tensor]:
        """One pass of float32 batches [batch_size, d_model] (last one may be smaller).

        Shuffling reads a few random shards at a time and permutes their rows: memory is bounded by
        SHUFFLE_BUFFER_SHARDS shards, and the order depends only on `seed`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        order = torch.randperm(n_shards, generator=gen).tolist() if shuffle else list(range(n_shards))
        group = SHUFFLE_BUFFER_SHARDS if shuffle else 1
        leftover = torch.zeros(0, self.d_model)
        n_batch = 0
        for g in range(0, n_shards, group):
            parts = [leftover]
            for i in order[g : g + group]:
                shard = self.load_shard(i)
                parts.append(shard.acts[self.split_mask(shard.doc, split)])
            pool = torch.cat(parts)
            if shuffle:
                pool = pool[torch.randperm(len(pool), generator=gen)]
            n_full = len(pool) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                if n_batch >= skip_batches:
                    yield pool[start : start + batch_size]
                n_batch += 1
            leftover = pool[n_full:]
        if len(leftover) and n_batch >= skip_batches:
            yield leftover

    def context(self, row: int, before: int = 12, after: int = 4) -> tuple[list[int], int]:
        """Token ids around global `row` within its document, and where that token sits in the window."""
        if not 0 <= row < self.n_tokens:
            raise ValueError(f"row {row} out of range 0..{self.n_tokens - 1}")
        index = next(i for i in range(len(self._offsets) - 1) if row < self._offsets[i + 1])
        if self._cached_shard is None or self._cached_shard[0] != index:
            self._cached_shard = (index, self.load_shard(index))
        shard = self._cached_shard[1]
        local = row - shard.offset
        same_doc = (shard.doc == shard.doc[local]).nonzero().squeeze(1)
        lo = max(int(same_doc[0]), local - before)
        hi = min(int(same_doc[-1]) + 1, local + after + 1)
        return shard.token_ids[lo:hi].tolist(), local - lo
