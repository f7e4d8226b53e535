"""Write side of an activation store: run texts through the LM and save activations shard by shard.

Collection writes one shard at a time (temp name, then rename) and records it in the manifest, so
an interrupted run resumes at the next shard and ends with shard files byte-identical to an
uninterrupted run's. Each shard's manifest entry keeps the seconds spent computing and writing it;
`ActivationStore.collect_seconds` adds them up, so a resumed store still reports its whole cost.

Under torchrun the shard plan is cut into contiguous blocks, one per rank (disjoint document ranges).
Each rank writes its shards and records them in its own manifest.rank-R.json; once all are done, rank 0
merges them into manifest.json. Shards are the same whichever process computes them, so the store is
byte-identical to a one-process collection (the manifest differs only in the timings), and a run resumes
at the first missing shard of each block, whatever number of processes wrote the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelib import distributed
from saelib.atomic import save_tensors, write_json, write_jsonl
from saelib.batching import padded_batches
from saelib.corpus import Document
from saelib.errors import BadArgument, BadFile
from saelib.lm import LM
from saelib.store import DOCUMENTS_FILE, EVAL_EVERY, FORMAT_VERSION, MANIFEST_FILE, ActivationStore

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TENSOR_DOC_ROWS = 64  # store_from_tensor cuts its rows into documents of this many
RANK_MANIFEST = "manifest.rank-{}.json"  # the shards one torchrun rank has written, until rank 0 merges


def _doc_text(doc: str | Document) -> str:
    return doc if isinstance(doc, str) else doc.text


def _doc_record(doc: str | Document) -> dict:
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


def _save_shard(out: Path, index: int, columns: dict[str, Tensor], started: float, placement: dict) -> dict:
    """Write shard `index`; its manifest entry holds the sums the store's statistics are made from and
    the seconds since `started`."""
    name = _shard_name(index)
    save_tensors(columns, out / name)
    acts = columns["acts"].double()
    norms = acts.norm(dim=1)
    return {
        "file": name,
        "n_tokens": len(acts),
        **placement,
        "sum": acts.sum(0).tolist(),
        "sum_norm": norms.sum().item(),
        "sum_sq_norm": (norms**2).sum().item(),
        "seconds": time.perf_counter() - started,
    }


def _finish(manifest: dict) -> None:
    """Mark the manifest complete, with the statistics of all its shards."""
    shards = manifest["shards"]
    n_tokens = sum(s["n_tokens"] for s in shards)
    if n_tokens == 0:
        raise BadArgument("No tokens collected: every text was a single token; use longer texts")
    manifest.update(
        complete=True,
        n_tokens=n_tokens,
        mean=(torch.tensor([s["sum"] for s in shards], dtype=torch.float64).sum(0) / n_tokens).tolist(),
        mean_norm=sum(s["sum_norm"] for s in shards) / n_tokens,
        mean_sq_norm=sum(s["sum_sq_norm"] for s in shards) / n_tokens,
    )


def _finished_shards(out: Path, settings: dict, plan: list[tuple[int, int]]) -> dict[int, dict]:
    """Shard index -> manifest entry of every shard an earlier run with the same settings finished, read
    from manifest.json and the per-rank manifests (so any number of processes may have written them)."""
    index_of = {span: i for i, span in enumerate(plan)}
    finished = {}
    for path in [out / MANIFEST_FILE, *sorted(out.glob(RANK_MANIFEST.format("*")))]:
        if not path.exists():
            continue
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BadFile(f"{path} is corrupt ({err}); delete {out} and collect again") from err
        changed = [key for key in settings if previous.get(key) != settings[key]]
        if changed:
            raise BadFile(
                f"{out} already holds a collection made with different settings ({', '.join(changed)}); "
                "pick another out_dir or delete this one"
            )
        for entry in previous["shards"]:
            index = index_of.get((entry["doc_start"], entry["doc_stop"]))
            if index is None or entry["file"] != _shard_name(index) or not (out / entry["file"]).exists():
                raise BadFile(
                    f"{out} is inconsistent ({path.name}: {entry['file']}); delete it and collect again"
                )
            finished[index] = entry
    return finished


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def collect(
    lm: LM,
    corpus: Sequence[str | Document],
    out_dir: str | os.PathLike,
    layer: int | str | None = None,
    site: str | None = None,
    max_tokens_per_text: int = 128,
    dtype: str = "float16",
    drop_first_token: bool = True,
    massive_ratio: float | None = 10.0,
    shard_tokens: int = 16384,
    batch_size: int = 16,
    corpus_spec: dict | str | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Run `corpus` (texts or Documents) through `lm` and store activations at (layer, site), or at a hook
    name such as "blocks.8.hook_resid_pre" or "model.layers.8" passed as `layer` (see `LM.resolve`).

    Every text starts with the LM's sink token (`lm.sink_token`, e.g. a BOS), never a word: position 0
    is an attention sink with a norm ~100x the rest that would dominate the SAE's MSE, so it is left out
    unless `drop_first_token=False`; the first word is kept. A few other tokens carry such
    "massive activations" too (a second sink, often at position 1): tokens whose norm exceeds
    `massive_ratio` x the batch's median norm are left out as well (None keeps them).
    """
    distributed.init()  # under torchrun: join the other ranks (nothing to do in one process)
    layer, site = lm.resolve(layer, site)
    if dtype not in DTYPES:
        raise BadArgument(f"dtype {dtype!r} not supported; use one of {list(DTYPES)}")
    docs = list(corpus)
    if not docs:
        raise BadArgument("Empty corpus: pass at least one text (e.g. saelib.load_corpus('builtin'))")
    texts = [_doc_text(d) for d in docs]
    if any(not t or not t.strip() for t in texts):
        raise BadArgument("The corpus contains empty texts; drop them before collecting")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records = [_doc_record(d) for d in docs]
    settings = {
        "format_version": FORMAT_VERSION,
        "model": lm.name,
        "layer": layer,
        "site": site,
        "d_model": lm.d_model,
        "precision": lm.precision,  # of the LM's forward; the stored dtype is `dtype`
        "dtype": dtype,
        "max_tokens_per_text": max_tokens_per_text,
        "sink_token": lm.sink_token,
        "drop_first_token": drop_first_token,
        "massive_ratio": massive_ratio,
        "shard_tokens": shard_tokens,
        "n_documents": len(docs),
        "documents_sha256": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
        "corpus_spec": corpus_spec,
        "eval_split": f"document index % {EVAL_EVERY} == {EVAL_EVERY - 1}",
    }
    input_ids = lm.token_ids(texts, max_tokens_per_text)
    skip = 1 if drop_first_token else 0
    kept = [max(len(ids) - skip, 0) for ids in input_ids]
    plan = _plan_shards(kept, shard_tokens)
    finished = _finished_shards(out, settings, plan)
    if distributed.is_main() and not (out / DOCUMENTS_FILE).exists():
        write_jsonl(out / DOCUMENTS_FILE, records)

    mine = distributed.block(len(plan))  # all of the plan in a single process
    own_manifest = out / (
        MANIFEST_FILE if distributed.world_size() == 1 else RANK_MANIFEST.format(distributed.rank())
    )
    entries = {i: finished[i] for i in mine if i in finished}
    block_tokens = [sum(kept[slice(*plan[i])]) for i in mine]
    bar = tqdm(
        total=sum(block_tokens),
        initial=sum(n for i, n in zip(mine, block_tokens) if i in entries),
        unit="tok",
        desc=f"collect L{layer} {site}",
        disable=not (progress and distributed.is_main()),
    )
    for shard_index in mine:
        if shard_index in entries:
            continue
        started = time.perf_counter()
        doc_start, doc_stop = plan[shard_index]
        columns, n_massive = _run_shard(
            lm, input_ids, range(doc_start, doc_stop), layer, site, skip, massive_ratio, batch_size, bar
        )
        columns["acts"] = columns["acts"].to(DTYPES[dtype]).contiguous()
        placement = {"doc_start": doc_start, "doc_stop": doc_stop, "n_massive_dropped": n_massive}
        entries[shard_index] = _save_shard(out, shard_index, columns, started, placement)
        shards = [entries[i] for i in sorted(entries)]
        write_json(own_manifest, {**settings, "complete": False, "shards": shards})
    bar.close()
    distributed.barrier()  # every rank's shards are on disk
    if distributed.is_main():
        finished = _finished_shards(out, settings, plan)
        manifest = {**settings, "complete": False, "shards": [finished[i] for i in range(len(plan))]}
        _finish(manifest)
        write_json(out / MANIFEST_FILE, manifest)
        for path in out.glob(RANK_MANIFEST.format("*")):
            path.unlink()
    distributed.barrier()  # manifest.json is complete
    return ActivationStore(out)


def massive_mask(norms: Tensor, ratio: float | None, reference: Tensor | None = None) -> Tensor:
    """Tokens whose norm exceeds `ratio` x the median of `reference` (default: of `norms` themselves)."""
    if ratio is None or norms.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    return norms > ratio * (norms if reference is None else reference).median()


def _run_shard(
    lm, input_ids, doc_ids: range, layer, site, skip, massive_ratio, batch_size, bar
) -> tuple[dict[str, Tensor], int]:
    """The shard columns of documents `doc_ids` in document order (float32 acts), and how many massive
    tokens were left out. Batches are sorted by length."""
    per_doc, positions = {}, {}
    for batch_docs, ids, mask in padded_batches(input_ids, doc_ids, batch_size, lm.tokenizer.pad_token_id):
        acts = lm.forward_to(ids.to(lm.device), mask.to(lm.device), layer, site).cpu()
        if not torch.isfinite(acts).all():
            raise BadArgument(
                f"The model produced NaN/inf activations at layer {layer} ({site}); "
                "load it in float32 or pick another layer"
            )
        rows = [acts[row, skip : len(input_ids[i])] for row, i in enumerate(batch_docs)]
        median_from = torch.cat(rows).norm(dim=1)
        for i, doc_acts in zip(batch_docs, rows):
            keep = ~massive_mask(doc_acts.norm(dim=1), massive_ratio, median_from)
            per_doc[i], positions[i] = doc_acts[keep], torch.arange(skip, len(input_ids[i]))[keep]
            bar.update(len(doc_acts))
    columns = {
        "acts": torch.cat([per_doc[i] for i in doc_ids]),
        "token_ids": torch.cat(
            [torch.tensor(input_ids[i], dtype=torch.int32)[positions[i]] for i in doc_ids]
        ),
        "doc": torch.cat([torch.full((len(per_doc[i]),), i, dtype=torch.int32) for i in doc_ids]),
        "pos": torch.cat([positions[i] for i in doc_ids]).int(),
    }
    return columns, sum(len(input_ids[i]) - skip - len(positions[i]) for i in doc_ids)


def store_from_tensor(
    acts: Tensor,
    out_dir: str | os.PathLike,
    shard_tokens: int = 16384,
    model_name: str = "synthetic",
    layer: int = 0,
    site: str = "resid",
) -> ActivationStore:
    """A valid store from an in-memory [n, d] tensor (documents of 64 rows) for tests and experiments."""
    if acts.ndim != 2 or len(acts) == 0:
        raise BadArgument(f"acts must be a non-empty [n_tokens, d] tensor, got shape {tuple(acts.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, d = acts.shape
    n_documents = (n + TENSOR_DOC_ROWS - 1) // TENSOR_DOC_ROWS
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "layer": layer,
        "site": site,
        "d_model": d,
        "dtype": "float32",
        "drop_first_token": False,
        "shard_tokens": shard_tokens,
        "n_documents": n_documents,
        "corpus_spec": "tensor",
        "shards": [],
    }
    for i, start in enumerate(range(0, n, shard_tokens)):
        started = time.perf_counter()
        chunk = acts[start : start + shard_tokens].float().contiguous()
        rows = torch.arange(start, start + len(chunk))
        columns = {
            "acts": chunk,
            "token_ids": torch.zeros(len(rows), dtype=torch.int32),
            "doc": (rows // TENSOR_DOC_ROWS).int(),
            "pos": (rows % TENSOR_DOC_ROWS).int(),
        }
        placement = {
            "doc_start": int(rows[0]) // TENSOR_DOC_ROWS,
            "doc_stop": int(rows[-1]) // TENSOR_DOC_ROWS + 1,
        }
        manifest["shards"].append(_save_shard(out, i, columns, started, placement))
    write_jsonl(out / DOCUMENTS_FILE, [{"text": f"synthetic document {i}"} for i in range(n_documents)])
    _finish(manifest)
    write_json(out / MANIFEST_FILE, manifest)
    return ActivationStore(out)
