"""One decode loop from :class:`hired.PreparedInputs` to per-row tokens, text and timing marks.

``hired.generate`` and the pipeline's generation stage both decode through here, so greedy
decoding, padding, EOS, sampling, stop strings and constrained choices mean one thing everywhere.

The loop is built for throughput and every piece is one switch of :class:`DecodeOptions`:

* a static KV cache (transformers' ``StaticCache``, ``batch x (prompt + max_new_tokens)``,
  written in place) instead of ``DynamicCache``, which concatenates every layer's keys and values
  at every step;
* prefill from ``inputs_embeds`` (eager: its length varies), then decode steps fed token ids;
* the decode step compiled with ``torch.compile`` (CUDA graphs), batches padded to a few sizes and
  the cache to a multiple of ``cache_multiple`` tokens, so each bucket compiles once;
* EOS, stop and choice states kept on the device; the host reads them every ``sync_every`` steps.

Greedy decoding gives, token for token, what transformers' ``generate(do_sample=False)`` gives on
the same inputs: the same position ids (counted over the unpadded tokens), mask and argmax.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from . import choices as choice_rows
from .chooser import TokenChooser
from .sampling import Sampling, per_row
from .transfer import to_device

CACHES = ("static", "dynamic")
# Batch sizes a compiled step is built for: a batch is padded up to the next one.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)


@dataclass(frozen=True)
class DecodeOptions:
    """How the loop runs; ``None`` fields take the device's default (:meth:`resolve`).

    * ``cache``: ``"static"`` (in place, fixed size; the default) or ``"dynamic"`` (grown by
      concatenation). On a CPU the static cache decoded 1.05-1.24x faster than transformers'
      generate in 5 of 6 settings (bench/README.md).
    * ``compile``: compile the decode step (``torch.compile``, ``compile_mode``). Default on for
      CUDA; off on a CPU, where it measured no faster than eager and each shape takes a minute or
      more to build.
    * ``sync_every``: steps between host reads of the done flags (and stop strings). Default 8 on
      CUDA, 1 on CPU (where reading costs nothing and saves the steps after the last EOS).
    * ``pad_to_buckets``: pad the batch to the next of ``batch_buckets`` rows and the cache to a
      multiple of ``cache_multiple`` positions, the shapes a compiled step is built for. Default:
      when compiling (padding an eager batch would only add work).
    """

    cache: str | None = None
    compile: bool | None = None
    sync_every: int | None = None
    pad_to_buckets: bool | None = None
    compile_mode: str = "reduce-overhead"
    batch_buckets: tuple[int, ...] = BATCH_BUCKETS
    cache_multiple: int = 256

    def __post_init__(self) -> None:
        if self.cache is not None and self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.sync_every is not None and (not isinstance(self.sync_every, int) or self.sync_every < 1):
            raise ValueError(f"sync_every must be an integer >= 1, got {self.sync_every!r}")
        if self.compile and self.cache == "dynamic":
            raise ValueError("compile=True needs cache='static' (a dynamic cache changes shape every step)")
        if not self.batch_buckets or list(self.batch_buckets) != sorted(set(self.batch_buckets)) or self.batch_buckets[0] < 1:
            raise ValueError(f"batch_buckets must be increasing sizes >= 1, got {self.batch_buckets!r}")
        if self.cache_multiple < 1:
            raise ValueError(f"cache_multiple must be >= 1, got {self.cache_multiple}")

    def resolve(self, device: torch.device) -> "DecodeOptions":
        """Every ``None`` replaced by the default for ``device``."""
        cuda = device.type == "cuda"
        cache = self.cache or "static"
        compile_ = (cuda and cache == "static") if self.compile is None else self.compile
        if compile_ and cache != "static":
            raise ValueError("compile=True needs cache='static'")
        sync_every = self.sync_every or (8 if cuda else 1)
        pad = compile_ if self.pad_to_buckets is None else self.pad_to_buckets
        return replace(self, cache=cache, compile=compile_, sync_every=sync_every, pad_to_buckets=pad)

    def batch_bucket(self, rows: int) -> int:
        return next((b for b in self.batch_buckets if b >= rows), rows)

    def cache_length(self, length: int) -> int:
        return -(-length // self.cache_multiple) * self.cache_multiple


@dataclass
class DecodedRow:
    token_ids: list[int]  # generated ids, through the EOS or the token that completed a stop string
    text: str  # decoded without special tokens, stripped, cut before the stop string
    finish_reason: str  # "eos", "stop" or "length"


@dataclass
class DecodeTiming:
    """Marks in seconds of ``time.perf_counter()``; the loop syncs the device once for the first one."""

    started: float  # the caller's start (before preparing the inputs) or the loop's own
    first_token: float  # every row's first new token on the host
    finished: float
    steps: int  # decode steps run (prefill's token included)
    batch: int  # rows computed, padding rows included
    cache_length: int  # positions of the KV cache per row

    @property
    def ttft_s(self) -> float:
        return self.first_token - self.started

    @property
    def total_s(self) -> float:
        return self.finished - self.started


@dataclass
class Decoded:
    rows: list[DecodedRow]
    timing: DecodeTiming
    options: DecodeOptions = field(repr=False)


def eos_token_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return sorted({int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)})


def pad_token_id(model, tokenizer) -> int:
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        eos = eos_token_ids(model)
        pad = eos[0] if eos else 0
    return int(pad)


def trim_at_eos(token_ids: list[int], eos_ids) -> list[int]:
    """Generated ids up to and including the first EOS (what follows is batch padding)."""
    for i, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[: i + 1]
    return token_ids


class Decoder:
    """Decodes batches for one model; keeps its static cache and compiled step between calls
    (a compiled step is reused only while the cache keeps its shape and address)."""

    def __init__(self, model, tokenizer, options: DecodeOptions | None = None):
        self.model = model
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor or its tokenizer
        self.device = model.device
        self.options = (options or DecodeOptions()).resolve(self.device)
        self.eos_ids = eos_token_ids(model)
        self.pad_id = pad_token_id(model, self.tokenizer)
        params = inspect.signature(type(model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.2x renamed it
        self._cache = None
        self._step = None

    @torch.no_grad()
    def __call__(
        self,
        prepared,
        max_new_tokens: int = 64,
        *,
        min_new_tokens: int = 0,
        sampling: Sampling | Sequence[Sampling | None] | None = None,
        choices=None,
        started: float | None = None,
    ) -> Decoded:
        """Decode every row of ``prepared`` (anything with ``inputs_embeds``, ``attention_mask`` and
        ``input_ids``, left-padded ``(B, L)``).

        ``sampling``: one :class:`hired.Sampling` for every row, or a list with one per row (``None``:
        greedy). ``choices``: a list of strings for every row, or one per row (a list of strings, a
        :class:`hired.choices.ChoiceTrie` or ``None``); a row's bad choices raise
        :class:`hired.ChoiceError` naming it, before anything runs. ``started``: the time mark
        TTFT counts from (default: now).
        """
        started = time.perf_counter() if started is None else started
        options = self.options
        rows = prepared.inputs_embeds.shape[0]
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
        samplings = per_row(sampling, rows)
        tries = choice_rows.per_row(choices, rows, self.tokenizer, max_new_tokens)
        if any(t is not None for t in tries):
            if not self.eos_ids:
                raise ValueError("choices end with the model's EOS token, and this model's generation_config has none")
            if min_new_tokens:
                raise ValueError("min_new_tokens and choices contradict each other: a choice ends when it is complete")

        embeds, mask, ids = prepared.inputs_embeds, prepared.attention_mask, prepared.input_ids
        batch = options.batch_bucket(rows) if options.pad_to_buckets else rows
        if batch > rows:  # padding rows repeat the last row: real work, thrown away
            extra = batch - rows
            embeds = torch.cat([embeds, embeds[-1:].expand(extra, -1, -1)])
            mask = torch.cat([mask, mask[-1:].expand(extra, -1)])
            ids = torch.cat([ids, ids[-1:].expand(extra, -1)])
            samplings = samplings + [Sampling()] * extra
            tries = tries + [None] * extra
        length = mask.shape[1]
        cache_length = length + max_new_tokens
        if options.pad_to_buckets and options.cache == "static":
            cache_length = options.cache_length(cache_length)
        cache = self._cache_for(batch, cache_length, embeds.dtype)

        device = embeds.device
        mask = mask.to(device=device, dtype=torch.long)
        full_mask = torch.cat([mask, mask.new_ones(batch, cache_length - length)], dim=1)  # future slots: causal
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        next_position = positions[:, -1:] + 1
        chooser = TokenChooser(samplings, tries, self.eos_ids, device, ids, mask, min_new_tokens)
        eos = chooser.eos
        stops = [s.stop for s in samplings]
        tokens = torch.full((batch, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        stopped: dict[int, tuple[int, int]] = {}  # row -> (tokens kept, characters kept)

        logits = self._forward(
            inputs_embeds=embeds, attention_mask=full_mask[:, :length], position_ids=positions, cache=cache
        )
        first_token = None
        steps = 0
        for step in range(max_new_tokens):
            picked = chooser(logits, step, max_new_tokens)
            picked = torch.where(done, self.pad_id, picked)
            tokens[:, step] = picked
            chooser.taken(picked)
            done |= torch.isin(picked, eos)
            steps = step + 1
            if first_token is None:
                picked.cpu()  # the one sync that dates the first token
                first_token = time.perf_counter()
            if steps == max_new_tokens:
                break
            if steps % options.sync_every == 0:
                self._check_stops(tokens, steps, stops, stopped, done)
                if bool(done[:rows].all()):
                    break
            step_mask = full_mask if options.cache == "static" else full_mask[:, : length + steps]
            logits = self._decode_step(picked[:, None], step_mask, next_position, cache)
            next_position = next_position + 1
        self._check_stops(tokens, steps, stops, stopped, done)
        host = tokens[:rows, :steps].tolist()
        finished = time.perf_counter()
        out = [self._row(host[r], stopped.get(r), r < len(stops) and bool(stops[r])) for r in range(rows)]
        timing = DecodeTiming(started, first_token, finished, steps, batch, cache_length)
        return Decoded(out, timing, options)

    def release(self) -> None:
        """Let the held static cache go (e.g. before backing off after running out of memory)."""
        self._cache = None

    # -- the model ----------------------------------------------------------------------------------
    def _cache_for(self, batch: int, cache_length: int, dtype: torch.dtype):
        from transformers import DynamicCache, StaticCache

        config = self.model.config
        if self.options.cache == "dynamic":
            return DynamicCache(config=config)
        held = self._cache
        if held is not None and held[0] == (batch, cache_length, dtype):
            held[1].reset()
            return held[1]
        self._cache = None  # let the old one go before the new one is allocated
        cache = StaticCache(config=config, max_cache_len=cache_length)
        self._cache = ((batch, cache_length, dtype), cache)
        return cache

    def _forward(self, cache, **inputs) -> torch.Tensor:
        out = self.model(**inputs, **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _decode_step(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        if not self.options.compile:
            return self._forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        if self._step is None:
            # One graph per (batch bucket, cache length): more than dynamo's default 8 before it falls back to eager.
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._step = torch.compile(self.model.__call__, mode=self.options.compile_mode, dynamic=False, fullgraph=False)
        out = self._step(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].clone()  # CUDA graphs reuse their output buffers at the next replay

    # -- the host side ------------------------------------------------------------------------------
    def _text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _check_stops(self, tokens, steps: int, stops, stopped: dict, done: torch.Tensor) -> None:
        """Find rows whose text now holds a stop string; mark them done on the device."""
        watched = [r for r, s in enumerate(stops) if s and r not in stopped]
        if not watched:
            return
        host = tokens[watched, :steps].tolist()
        newly = []
        for r, ids in zip(watched, host):
            ids = trim_at_eos(ids, self.eos_ids)
            cut = _first_stop(self._text(ids), stops[r])
            if cut is None:
                continue
            # The fewest tokens whose text holds the stop string: what the row would have stopped at.
            kept = next(n for n in range(1, len(ids) + 1) if _first_stop(self._text(ids[:n]), stops[r]) is not None)
            stopped[r] = (kept, _first_stop(self._text(ids[:kept]), stops[r]))
            newly.append(r)
        if newly:
            done[to_device(torch.tensor(newly), done.device)] = True

    def _row(self, ids: list[int], stop: tuple[int, int] | None, watched: bool) -> DecodedRow:
        if stop is not None:
            kept, cut = stop
            return DecodedRow(ids[:kept], self._text(ids[:kept])[:cut].strip(), "stop")
        ids = trim_at_eos(ids, self.eos_ids)
        reason = "eos" if ids and ids[-1] in self.eos_ids else "length"
        return DecodedRow(ids, self._text(ids).strip(), reason)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def decode(model, prepared, tokenizer, max_new_tokens: int = 64, *, options: DecodeOptions | None = None, **kwargs) -> Decoded:
    """Decode ``prepared`` once with a fresh :class:`Decoder` (keyword arguments as :meth:`Decoder.__call__`).
    Hold a :class:`Decoder` to keep its cache and compiled step across batches."""
    return Decoder(model, tokenizer, options)(prepared, max_new_tokens, **kwargs)
