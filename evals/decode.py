"""Sampling completions for the downstream evaluations, with a KV cache and without work on finished sequences.

``transformers``' ``generate`` runs a batch until its longest sequence ends (a finished row keeps being computed,
as padding) and prefills each prompt once per requested sample. :func:`decode` instead

- sorts the prompts by length before batching them (less left padding), and returns completions in prompt order;
- prefills each prompt once and copies its keys and values for its n samples;
- drops a row from the batch (its cache rows too) as soon as it ends: at an end-of-sequence token, once
  ``done(its text so far)`` holds, or after ``max_new_tokens``;
- keeps each layer's keys and values in a buffer allocated once per batch for the prompt and ``max_new_tokens``
  (:func:`preallocated_cache`), where ``transformers``' ``DynamicCache`` concatenates them anew at every step (a
  quarter of the sampling's time, ``benchmarks.decode_profile``);
- draws each sample from a random stream of its own, seeded from (seed, prompt index, sample index), with the
  nucleus sampling of EBFT's sampler (``ebft.strided``; temperature, then top-p, no top-k); temperature 0 or
  ``greedy`` is greedy.

So a completion does not depend on the batch size, on which other prompts share its batch or on when they end,
except through floating-point rounding of batched arithmetic. Greedy completions equal ``generate``'s
(``tests/test_code_eval.py``); ``benchmarks.code_generation`` times both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ebft.strided import derive_seed, draw_tokens


def end_ids(model, tokenizer) -> set[int]:
    """The token ids that end a sequence: the generation config's end-of-sequence ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list | tuple) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@functools.cache
def preallocated_layer():
    """The class :class:`PreallocatedLayer` (defined on first use: ``transformers`` is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in buffers of ``capacity`` positions, written in place at
        each step; ``keys`` and ``values`` are views of their filled part (a longer sequence moves them to larger
        buffers). Only what :func:`decode` uses is supported: no cropping."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            if self.buffers is None or end > self.buffers[0].shape[-2]:
                size = max(end, self.capacity)
                grown = tuple(s.new_empty(*s.shape[:-2], size, s.shape[-1]) for s in (key_states, value_states))
                if self.buffers is not None:
                    for new, old in zip(grown, self.buffers, strict=True):
                        new[..., : self.length, :] = old[..., : self.length, :]
                self.buffers = grown
            for buffer, states in zip(self.buffers, (key_states, value_states), strict=True):
                buffer[..., self.length : end, :] = states
            self.length = end
            self.device, self.is_initialized = key_states.device, True
            return self._view()

        def _view(self):
            self.keys, self.values = (buffer[..., : self.length, :] for buffer in self.buffers)
            return self.keys, self.values

        def reset(self) -> None:
            super().reset()
            self.length, self.buffers = 0, None

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("a preallocated cache cannot be cropped")

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.length:
                self.buffers = tuple(buffer.repeat_interleave(repeats, dim=0) for buffer in self.buffers)
                self._view()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.length:
                self.buffers = tuple(buffer[indices] for buffer in self.buffers)
                self._view()

    return PreallocatedLayer


def preallocated_cache(model, capacity: int):
    """A ``DynamicCache`` for ``model`` whose layers keep ``capacity`` positions preallocated; layers of other kinds
    (sliding-window, …) stay as ``DynamicCache`` makes them."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    cache.layers = [preallocated_layer()(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.no_grad()
def decode(model, tokenizer, prompts: Sequence[str], **sampling) -> list[list[str]]:
    """``n`` completions per prompt (see the module's docstring); ``batch_size`` prompts (× n rows) per batch.
    ``sampling``: :func:`decode_tokens`' keyword arguments (n, greedy, temperature, top_p, max_new_tokens, batch_size,
    done, seed)."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    tokens = decode_tokens(model, tokenizer, encoded, **sampling)
    return [[tokenizer.decode(t, skip_special_tokens=True) for t in samples] for samples in tokens]


@torch.no_grad()
def decode_tokens(
    model,
    tokenizer,
    encoded: Sequence[Sequence[int]],
    *,
    n: int,
    greedy: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    done: Callable[[str], bool] | None,
    seed: int,
    progress: bool = True,
) -> list[list[list[int]]]:
    """:func:`decode` on tokenised prompts: ``n`` completions per prompt as token ids, each ending with its
    end-of-sequence token where it has one (``tokenizer`` decodes the text ``done`` is asked about)."""
    device = next(model.parameters()).device
    greedy = greedy or temperature == 0
    stops = end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    out: list[list[list[int]]] = [[] for _ in encoded]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for members in tqdm(batches, desc=f"generate ({n} per prompt)", unit="batch", disable=not progress):
        width = max(len(encoded[i]) for i in members)
        ids = torch.full((len(members), width), pad, dtype=torch.long)
        mask = torch.zeros((len(members), width), dtype=torch.long)
        for row, i in enumerate(members):  # left padding
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        cache = preallocated_cache(model, width + max_new_tokens)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]  # fmt: skip
        # every prompt's keys and values, copied for its n samples: row r is sample r % n of prompt members[r // n]
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        position = positions[:, -1].repeat_interleave(n) + 1
        rows = [(i, j) for i in members for j in range(n)]
        streams = [torch.Generator(device=device).manual_seed(derive_seed(seed, i, j)) for i, j in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        texts = [""] * len(rows)
        live = list(range(len(rows)))  # the rows still in the batch, in batch order
        for _ in range(max_new_tokens):
            drawn = draw_tokens(logits, 0.0 if greedy else temperature, top_p, [streams[r] for r in live])
            keep = []
            for slot, (r, token) in enumerate(zip(live, drawn.tolist(), strict=True)):
                tokens[r].append(token)
                ended = token in stops or len(tokens[r]) == max_new_tokens
                if not ended and done is not None:
                    texts[r] = tokenizer.decode(tokens[r], skip_special_tokens=True)
                    ended = done(texts[r])
                if not ended:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch, their cache rows too
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, position, drawn = mask[index], position[index], drawn[index]
                live = [live[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            logits = model(input_ids=drawn[:, None], attention_mask=mask, position_ids=position[:, None], cache=cache,
                           use_cache=True).logits[:, -1]  # fmt: skip
            position = position + 1
        for r, (i, _) in enumerate(rows):
            out[i].append(tokens[r])
    return out
