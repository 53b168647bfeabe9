"""Strided block-parallel sampling (docs/method.md §3).

A chunk x of L tokens holds NB = (L − G − c)/s + 1 blocks. Block k conditions on the nested prefix x[0 : c + k·s] and
samples G tokens; its ground truth is x[c + k·s : c + k·s + G]. All blocks live in one sequence of S = L + NB·G
tokens, [x_0 … x_{L−1} | generated], generated tokens step-major: step t of block k at index L + t·NB + k, with
position id c + k·s + t (the position of the token it replaces). Prompt rows are causal; generated token (t, k) sees
x[0 : c + k·s], itself and its own block's earlier tokens, never another block and never the ground truth.

Two samplers give the same tokens for the same random stream:

- ``use_cache=False``, the released reference: G full forward passes over the growing sequence, no cache
  (≈ G·L + NB·G²/2 token-forwards).
- ``use_cache=True``: one prefill of the chunk (each distinct chunk once, in ``torch.unique``'s sorted order, its
  keys, values and logits then gathered back to batch order for its copies) plus G − 1 decode steps of NB tokens
  each with a KV cache and a 4-D mask (≈ L + NB·G token-forwards).

Random numbers: at step t both draw the tokens of all (row, block) pairs from the (B·NB, V) probabilities, one uniform
number per pair (inverse-CDF sampling, :func:`draw_tokens`), rows in batch order and blocks in index order, from the
caller's ``generator``; nothing else consumes it. ``generator`` may also be a list of g generators, one per group of
B/g consecutive rows (the n copies of one chunk): each group then draws from its own stream, so a chunk's rollouts do
not depend on which other chunks share its batch, or on which process samples it. A token changes under logit noise
ε only where its uniform falls within about ε of a bucket's edge, so the ~1e-5 logit noise between the two samplers
in fp32 leaves their tokens equal; in bf16 a few per cent may flip. Temperature 0 is greedy.
"""

from __future__ import annotations

import torch

from ebft.layout import num_blocks
from ebft.packing import PackedChunks

__all__ = ["num_blocks"]  # re-exported: the block count of a layout


def attention_mask(L: int, c: int, s: int, G: int) -> torch.Tensor:
    """(S, S) bool, True where query row may attend to key column."""
    NB = num_blocks(L, c, s, G)
    S = L + NB * G
    mask = torch.zeros(S, S, dtype=torch.bool)
    mask[:L, :L] = torch.ones(L, L, dtype=torch.bool).tril()
    t = torch.arange(G).repeat_interleave(NB)  # (NB·G,) step of each generated index
    k = torch.arange(NB).repeat(G)  # (NB·G,) block of each generated index
    prefix = c + k * s  # visible prompt length of each generated row
    mask[L:, :L] = torch.arange(L)[None, :] < prefix[:, None]
    mask[L:, L:] = (k[:, None] == k[None, :]) & (t[None, :] <= t[:, None])
    return mask


def position_ids(L: int, c: int, s: int, G: int) -> torch.Tensor:
    """(S,) long: i for prompt index i, c + k·s + t for generated token (t, k)."""
    NB = num_blocks(L, c, s, G)
    t = torch.arange(G).repeat_interleave(NB)
    k = torch.arange(NB).repeat(G)
    return torch.cat([torch.arange(L), c + k * s + t])


def strided_documents(documents: torch.Tensor, L: int, c: int, s: int, G: int) -> torch.Tensor:
    """Document id of every strided position (B, S): the chunk's own, then each block's anchor x[c + k·s − 1]."""
    NB = num_blocks(L, c, s, G)
    anchors = documents[:, c + torch.arange(NB, device=documents.device) * s - 1]  # (B, NB)
    return torch.cat([documents, anchors.repeat(1, G)], dim=1)  # step-major, like the tokens


def layout_mask(
    L: int, c: int, s: int, G: int, *, documents: torch.Tensor | None = None, rows: slice = slice(None),
    cols: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """The 4-D boolean mask a model takes, for query ``rows`` and the first ``cols`` keys: (1 or B, 1, R, C).

    With ``documents`` (B, L), attention is also confined to one document: a prompt token sees only its own
    document, and block k only the part of its prefix in the document of its anchor x[c + k·s − 1].
    """
    base = attention_mask(L, c, s, G)[rows, :cols]
    if documents is None:
        return base[None, None]
    d = strided_documents(documents, L, c, s, G)  # (B, S)
    return (base.to(documents.device)[None] & (d[:, rows, None] == d[:, None, :cols]))[:, None]


def sequence_inputs(model, seq: torch.Tensor, L: int, c: int, s: int, G: int, documents=None) -> dict:
    """Mask and position ids for one forward of ``model`` over whole strided sequences seq (B, S), as keyword
    arguments."""
    B, S = seq.shape
    mask = layout_mask(L, c, s, G, documents=documents).to(seq.device)
    pos = position_ids(L, c, s, G).to(seq.device)
    return {"attention_mask": for_kernel(model, mask.expand(B, 1, S, S)), "position_ids": pos[None].expand(B, S)}


def attention_kernel(model) -> str:
    """The attention implementation a (possibly DDP- or peft-wrapped) transformers model runs."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) or "sdpa"


def for_kernel(model, mask: torch.Tensor) -> torch.Tensor:
    """A boolean 4-D mask (True: attend) in the form ``model``'s attention kernel reads.

    transformers hands a 4-D mask to the kernel unchanged: sdpa reads booleans, but eager *adds* the mask to the
    scores, so a boolean mask would add 1 to the allowed scores and mask nothing. Eager gets 0 where attention is
    allowed and the most negative value of the model's dtype elsewhere."""
    if attention_kernel(model) != "eager":
        return mask
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _expand(mask: torch.Tensor, B: int, device, model) -> torch.Tensor:
    """``mask`` on ``device``, for B rows, in the form ``model``'s attention kernel reads."""
    mask = mask.to(device)
    return for_kernel(model, mask.expand(B, *mask.shape[1:]) if mask.shape[0] == 1 else mask)


def predictor_index(L: int, c: int, s: int, G: int) -> torch.Tensor:
    """(G, NB) long: index of the position whose logits predict generated token (t, k).

    t = 0: the last visible prompt token, c + k·s − 1; t > 0: the block's previous token, L + (t − 1)·NB + k.
    """
    NB = num_blocks(L, c, s, G)
    k = torch.arange(NB)
    first = (c + k * s - 1)[None, :]
    later = L + torch.arange(G - 1)[:, None] * NB + k[None, :]
    return torch.cat([first, later], dim=0)


def generated_index(L: int, NB: int, G: int) -> torch.Tensor:
    """(G, NB) long: index of generated token (t, k) in the strided sequence."""
    return L + torch.arange(G)[:, None] * NB + torch.arange(NB)[None, :]


def strided_sequence(chunks: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """[chunk | generated] (B, S) from chunks (B, L) and blocks (B, NB, G), generated tokens step-major."""
    B, NB, G = blocks.shape
    return torch.cat([chunks, blocks.transpose(1, 2).reshape(B, G * NB)], dim=1)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed fixed by its parts (seed, step, …)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % 2**63
    return h


def block_valid(chunks: PackedChunks, c: int, s: int, G: int, answer_only: bool, document_mask: bool = False):
    """(B, NB) bool: block k's ground truth x[c+k·s : c+k·s+G] is all real tokens (and all answer tokens; and, with
    document masking, all in the document of its anchor x[c+k·s−1])."""
    L = chunks.input_ids.shape[1]
    NB = num_blocks(L, c, s, G)
    idx = c + torch.arange(NB)[:, None] * s + torch.arange(G)[None, :]  # (NB, G)
    ok = chunks.valid[:, idx].all(dim=-1)
    if answer_only:
        ok &= chunks.answer[:, idx].all(dim=-1)
    if document_mask:
        anchor = chunks.document[:, c + torch.arange(NB) * s - 1]  # (B, NB)
        ok &= (chunks.document[:, idx] == anchor[..., None]).all(dim=-1)
    return ok


def generated_logprobs(logits: torch.Tensor, seq: torch.Tensor, L: int, c: int, s: int, G: int, temperature: float):
    """log π(ŷ_{t,k}) / T-scaled, read at each token's predictor: logits (R, S, V), seq (R, S) → (R, NB, G)."""
    NB = num_blocks(L, c, s, G)
    pred = predictor_index(L, c, s, G).to(seq.device)  # (G, NB)
    target = seq[:, generated_index(L, NB, G).to(seq.device)]  # (R, G, NB)
    logp = torch.log_softmax(logits[:, pred].float() / temperature, dim=-1)  # (R, G, NB, V)
    return logp.gather(-1, target[..., None]).squeeze(-1).transpose(1, 2)  # (R, NB, G)


def strided_forward(model, seq: torch.Tensor, L: int, c: int, s: int, G: int, documents=None):
    """Logits (B, S, V) of one forward over whole strided sequences."""
    return model(input_ids=seq, **sequence_inputs(model, seq, L, c, s, G, documents), use_cache=False).logits


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The nucleus of each row of probs (R, V), as a boolean mask: the smallest set of most probable tokens whose
    mass reaches top_p (a token is kept while the mass of the tokens before it is ≤ top_p). Ties at the nucleus's edge
    go to the lower token ids, so the set is a function of the probabilities alone.

    The mass is accumulated over the largest probabilities from ``topk``, k growing fourfold until every row's nucleus
    closes, not over a sort of the whole vocabulary (a sort of 49,152 probabilities per row was 15 % of the code
    evaluation's sampling, and ``torch.sort`` leaves the order of equal probabilities, frequent in bf16, unspecified).
    """
    R, V = probs.shape
    k = min(V, 64)
    while True:
        top = probs.topk(k, dim=-1, sorted=True).values  # (R, k), descending
        outside = top.cumsum(dim=-1) - top > top_p
        if k == V or bool(outside[:, -1].all()):
            break
        k = min(V, 4 * k)
    size = torch.where(outside.any(dim=-1), outside.int().argmax(dim=-1), k)  # kept: the leading run inside
    edge = top.gather(-1, (size - 1)[:, None])  # the smallest kept probability
    keep = probs >= edge
    over = (keep.sum(dim=-1) > size).nonzero().squeeze(-1)  # rows with more ties at the edge than places
    if len(over):
        tied = probs[over] == edge[over]
        room = size[over] - (probs[over] > edge[over]).sum(dim=-1)
        keep[over] &= ~tied | (tied.cumsum(dim=-1) <= room[:, None])
    return keep


def draw_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """One token per row of logits (R, V): greedy at temperature 0, else nucleus sampling (:func:`nucleus`).
    ``generator``: one generator (or None) for all rows, or a list of g generators, one per group of R/g consecutive
    rows.

    Sampling inverts each row's cumulative distribution, in token-id order, at one uniform number per row: R random
    numbers per call, where ``torch.multinomial``'s exponential race draws R·V (a third of the cached sampler's time at
    V = 49,152). Cumulative sums are in float64 (a 150k vocabulary's tail keeps its mass); with top_p < 1 they run over
    the nucleus's tokens only."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    R, V = probs.shape
    if isinstance(generator, list | tuple):
        size = R // len(generator)
        u = torch.cat([torch.rand(size, generator=g, device=probs.device, dtype=torch.float64) for g in generator])
    else:
        u = torch.rand(R, generator=generator, device=probs.device, dtype=torch.float64)
    if top_p < 1.0:
        row, token = nucleus(probs, top_p).nonzero(as_tuple=True)  # row-major: each row's tokens in id order
        count = torch.bincount(row, minlength=R)
        rank = torch.arange(len(row), device=probs.device) - (count.cumsum(dim=0) - count)[row]
        kept = torch.full((R, int(count.max())), V - 1, dtype=torch.long, device=probs.device)
        mass = torch.zeros(kept.shape, dtype=torch.float64, device=probs.device)
        kept[row, rank] = token
        mass[row, rank] = probs[row, token].double()
        cdf = mass.cumsum(dim=-1)
        # the first kept token whose cumulative probability exceeds u · total
        at = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
        return kept.gather(-1, torch.minimum(at, (count - 1)[:, None])).squeeze(-1)
    rows = max(1, 2**24 // V)  # 128 MB of cumulative sums a time
    index = []
    for i in range(0, R, rows):
        cdf = probs[i : i + rows].double().cumsum(dim=-1)
        # the first token whose cumulative probability exceeds u · total: never one of zero probability
        index.append(torch.searchsorted(cdf, (u[i : i + rows] * cdf[:, -1])[:, None], right=True).squeeze(-1))
    return torch.cat(index).clamp_max(V - 1)


def _check(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature is {temperature}; it must be ≥ 0 (0 means greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p is {top_p}; it must lie in (0, 1]")


@torch.no_grad()
def sample_blocks(
    model,
    chunks: torch.Tensor,
    c: int,
    s: int,
    G: int,
    *,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample G tokens for every block of every chunk: (B, L) → (B, NB, G) long.

    ``generator``: one random stream for the whole batch, or a list of g streams, one per group of B/g consecutive
    rows (g must divide B). ``documents`` (B, L), optional: the packed document of each token, to confine attention to
    one document.
    """
    _check(temperature, top_p)
    B, L = chunks.shape
    if isinstance(generator, list | tuple) and (not generator or B % len(generator)):
        raise ValueError(f"{len(generator)} generators cannot split a batch of {B} rows into equal groups")
    NB = num_blocks(L, c, s, G)
    sampler = _sample_cached if use_cache else _sample_uncached
    return sampler(model, chunks, c, s, G, NB, temperature, top_p, generator, documents)


def _sample_uncached(model, chunks, c, s, G, NB, temperature, top_p, generator, documents):
    B, L = chunks.shape
    device = chunks.device
    pos = position_ids(L, c, s, G).to(device)
    pred = predictor_index(L, c, s, G).to(device)
    seq = chunks
    for t in range(G):
        n = L + t * NB
        mask = _expand(layout_mask(L, c, s, G, documents=documents, rows=slice(0, n), cols=n), B, device, model)
        logits = model(input_ids=seq, attention_mask=mask, position_ids=pos[None, :n].expand(B, n), use_cache=False)
        step_logits = logits.logits[:, pred[t]]  # (B, NB, V)
        tokens = draw_tokens(step_logits.reshape(B * NB, -1), temperature, top_p, generator).view(B, NB)
        seq = torch.cat([seq, tokens], dim=1)
    return seq[:, L:].view(B, G, NB).transpose(1, 2).contiguous()


def distinct_chunks(seq: torch.Tensor, L: int, documents: torch.Tensor | None = None):
    """The distinct chunks (with their documents, if given) among the first L tokens of rows seq (R, ≥ L): (index of
    one row per distinct chunk (U,), in ``torch.unique``'s sorted order; inverse (R,): the distinct chunk of each
    row)."""
    key = seq[:, :L] if documents is None else torch.cat([seq[:, :L], documents], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    U = int(inverse.max()) + 1
    rows = torch.arange(len(inverse), device=seq.device)
    first = torch.full((U,), len(inverse), device=seq.device, dtype=torch.long).scatter_reduce(
        0, inverse, rows, reduce="amin"
    )
    return first, inverse


def _sample_cached(model, chunks, c, s, G, NB, temperature, top_p, generator, documents):
    from transformers import DynamicCache

    B, L = chunks.shape
    device = chunks.device
    pos = position_ids(L, c, s, G).to(device)
    # Prefill each distinct chunk once (the n rollouts of a chunk are copies), then expand the cache to all rows.
    first, inverse = distinct_chunks(chunks, L, documents)
    U = len(first)
    unique_docs = None if documents is None else documents[first]
    prefill = layout_mask(L, c, s, G, documents=unique_docs, rows=slice(0, L), cols=L)
    prefill_mask = _expand(prefill, U, device, model)
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=chunks[first],
        attention_mask=prefill_mask,
        position_ids=pos[None, :L].expand(U, L),
        cache=cache,
        use_cache=True,
        logits_to_keep=c + torch.arange(NB, device=device) * s - 1,  # the positions predicting step 0
    )
    # Row b of the batch is the distinct chunk inverse[b]: it takes that chunk's keys, values and step-0 logits. The
    # gather is needed even when every chunk is distinct (U == B), as torch.unique sorts the rows: the cache, like the
    # logits, must be in batch order, or the decode steps of row b attend to another chunk's prompt.
    cache.reorder_cache(inverse)
    step_logits = out.logits[inverse]  # (B, NB, V)
    blocks = []
    for t in range(G):
        tokens = draw_tokens(step_logits.reshape(B * NB, -1), temperature, top_p, generator).view(B, NB)
        blocks.append(tokens)
        if t == G - 1:
            break
        rows = slice(L + t * NB, L + (t + 1) * NB)  # the strided indices of step t's tokens
        keys = L + (t + 1) * NB
        step_mask = _expand(layout_mask(L, c, s, G, documents=documents, rows=rows, cols=keys), B, device, model)
        out = model(
            input_ids=tokens,
            attention_mask=step_mask,
            position_ids=pos[None, rows].expand(B, NB),
            cache=cache,
            use_cache=True,
        )
        step_logits = out.logits  # (B, NB, V)
    return torch.stack(blocks, dim=2)  # (B, NB, G)
