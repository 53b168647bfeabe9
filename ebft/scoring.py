"""The policy's and the feature network's forwards over strided sequences, whole or with the chunk's prefix shared.

EBFT trains on R = B·n strided sequences [x_0 … x_{L−1} | generated] (``ebft.strided``): the n copies of a chunk hold
the same ground-truth region x[0:L], and no ground-truth position attends to a generated token. Two paths compute the
same quantities:

- whole (``shared=False``, the released computation): one forward over every row's S = L + NB·G tokens,
  R·S token-forwards;
- shared prefix (``shared=True``): one forward over each distinct chunk's L tokens (with gradient for the policy),
  whose keys and values every copy then attends to in a second forward over its NB·G generated tokens:
  U·L + R·NB·G token-forwards for U distinct chunks (at L = 1,024, c = s = G = 8, n = 4: 5,088 instead of 8,160 per
  chunk). Gradients flow through the shared keys and values into the prefix forward, once per copy.

Both read the same log-probabilities, losses and features, within floating-point rounding (``tests/test_scoring.py``
compares them token by token and parameter by parameter). Gradient checkpointing drops the KV cache in transformers'
layers, so a policy with it enabled takes the whole path.

The features run only the decoder layers up to one beyond their deepest depth fraction (at [0.25, 0.5, 0.75], 23 of
SmolLM2's 30 layers). Log-probabilities come from the hidden states through the output head in chunks of
``logits_chunk`` positions (0: all at once). With chunks, each chunk's logits are recomputed in the backward pass
instead of kept, so the (positions × vocabulary) fp32 logits of a whole batch are never held at once.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from ebft import strided
from ebft.features import backbone, base_model, layer_indices, pool_blocks, token_features


def output_head(model):
    """The output projection (hidden states → logits) of a (possibly peft-wrapped) causal LM; refuses a model whose
    logits are not plainly that projection (soft-capped or scaled logits)."""
    base = base_model(model)
    cfg = base.config
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, name, None) not in (None, 1, 1.0):
            raise ValueError(f"{cfg.model_type} transforms its logits ({name}); EBFT's scoring reads plain logits")
    return base.get_output_embeddings()


def checkpointed(model) -> bool:
    """Whether transformers' activation checkpointing is on in ``model`` (it then drops KV caches in training)."""
    return any(getattr(m, "gradient_checkpointing", False) for m in base_model(model).modules())


def _chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = head(hidden).float() / temperature  # (N, V)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int = 0):
    """log softmax(head(hidden) / T)[targets] for hidden (N, D) and targets (N,): (N,) float32.

    ``chunk`` > 0: in chunks of that many positions, each recomputed in the backward pass (activation checkpointing),
    so no more than one chunk's logits exist at a time."""
    N = hidden.shape[0]
    if not chunk or chunk >= N:
        return _chunk_logprobs(head, hidden, targets, temperature)
    parts = []
    for i in range(0, N, chunk):
        h, t = hidden[i : i + chunk], targets[i : i + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(parts)


def _body_forward(body, seq, L, c, s, G, documents, shared: bool, **kw):
    """Hidden-state outputs of ``body`` over strided rows seq (R, S).

    Returns (prefix outputs, generated outputs, chunks): with ``shared``, the prefix outputs cover the U distinct
    chunks (L positions each), the generated outputs each row's NB·G generated positions, and ``chunks`` is
    :func:`ebft.strided.distinct_chunks`' (first row of each chunk, chunk of each row). Without it, one output covers
    all S positions of every row, given twice, and chunks is None."""
    from transformers import DynamicCache

    R, S = seq.shape
    if not shared:
        out = body(input_ids=seq, **strided.sequence_inputs(body, seq, L, c, s, G, documents), use_cache=False, **kw)
        return out, out, None
    pos = strided.position_ids(L, c, s, G).to(seq.device)
    first, inverse = strided.distinct_chunks(seq, L, documents)
    U = len(first)
    docs_u = None if documents is None else documents[first]
    prefix_mask = strided.layout_mask(L, c, s, G, documents=docs_u, rows=slice(0, L), cols=L).to(seq.device)
    cache = DynamicCache(config=body.config)  # (layers beyond config.num_hidden_layers stay empty)
    pre = body(input_ids=seq[first, :L], attention_mask=strided.for_kernel(body, prefix_mask.expand(U, 1, L, L)),
               position_ids=pos[None, :L].expand(U, L), cache=cache, use_cache=True, **kw)  # fmt: skip
    cache.reorder_cache(inverse)  # each row attends to its chunk's keys and values (differentiably)
    gen_mask = strided.layout_mask(L, c, s, G, documents=documents, rows=slice(L, S), cols=S).to(seq.device)
    gen = body(input_ids=seq[:, L:], attention_mask=strided.for_kernel(body, gen_mask.expand(R, 1, S - L, S)),
               position_ids=pos[None, L:].expand(R, S - L), cache=cache, use_cache=True, **kw)  # fmt: skip
    return pre, gen, (first, inverse)


def policy_scores(
    model, seq: torch.Tensor, L: int, c: int, s: int, G: int, *, temperature: float, targets: torch.Tensor,
    documents: torch.Tensor | None = None, shared: bool = True, logits_chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """What EBFT's loss needs from the policy over strided rows seq (R, S):

    - log π(ŷ_{t,k}) / T of every generated token, read at its predictor (``strided.predictor_index``): (R, NB, G);
    - the CE term's per-row sum of NLLs at T = 1 over the ground-truth chunk, with ``targets`` (R, L) bool marking the
      counted target tokens (as ``ebft.losses.token_nll``): (R,).
    """
    shared = shared and not checkpointed(model)
    body, head = backbone(model), output_head(model)
    R, S = seq.shape
    NB = strided.num_blocks(L, c, s, G)
    pre, gen, chunks = _body_forward(body, seq, L, c, s, G, documents, shared)
    h_pre, h_gen = pre.last_hidden_state, gen.last_hidden_state
    D = h_pre.shape[-1]
    first_pred = c + torch.arange(NB, device=seq.device) * s - 1  # the prompt positions predicting step 0
    gen_tokens = seq[:, strided.generated_index(L, NB, G).to(seq.device)]  # (R, G, NB)
    # step 0 is predicted from the ground truth, steps t > 0 from the block's token t − 1 (the last step predicts
    # nothing); h_gen's generated positions start at L (whole path) or 0 (shared path)
    offset = L if chunks is None else 0
    step0 = h_pre[:, first_pred] if chunks is None else h_pre[chunks[1]][:, first_pred]  # (R, NB, D)
    later = h_gen[:, offset : offset + (G - 1) * NB]  # (R, (G−1)·NB, D), step-major like gen_tokens
    hidden = torch.cat([step0, later], dim=1).reshape(-1, D)
    logp = head_logprobs(head, hidden, gen_tokens.reshape(-1), temperature, logits_chunk)
    logp = logp.view(R, G, NB).transpose(1, 2)  # (R, NB, G)

    # CE: position j of the chunk predicts token j + 1; computed once per distinct chunk on the shared path
    ce_rows = torch.arange(R, device=seq.device) if chunks is None else chunks[0]
    chunk_ids, counted = seq[ce_rows, :L], targets[ce_rows, 1:]
    nll = -head_logprobs(head, h_pre[:, : L - 1].reshape(-1, D), chunk_ids[:, 1:].reshape(-1), 1.0, logits_chunk)
    nll = (nll.view(len(ce_rows), L - 1) * counted).sum(dim=1)
    return logp, nll if chunks is None else nll[chunks[1]]


@contextlib.contextmanager
def first_layers(body, count: int):
    """Run only the first ``count`` decoder layers of ``body``; the features need none deeper than their deepest depth
    fraction. Llama-style decoders loop over ``layers[: config.num_hidden_layers]``, so the config's count is lowered;
    GPT-2's loops over its whole block list ``h``, which is cut too (else it ran every block, and on the shared path
    the blocks beyond the count found no layer in a KV cache sized by the config: an IndexError)."""
    cfg = body.config
    full = cfg.num_hidden_layers
    count = min(count, full)
    blocks = getattr(body, "h", None)
    cut = isinstance(blocks, torch.nn.ModuleList) and len(blocks) == full and count < full
    cfg.num_hidden_layers = count
    if cut:
        body.h = blocks[:count]
    try:
        yield
    finally:
        cfg.num_hidden_layers = full
        if cut:
            body.h = blocks


@torch.no_grad()
def strided_features(
    net, seq: torch.Tensor, L: int, c: int, s: int, G: int, *, layers: list[float], pooling: str,
    documents: torch.Tensor | None = None, shared: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Ground-truth and generated block features (R, NB, D) of strided rows seq (R, S) from the feature network
    ``net`` (``ebft.features``), whole or with each distinct chunk's prefix computed once."""
    body = backbone(net)
    idx = layer_indices(body.config.num_hidden_layers, layers)
    # one layer beyond the deepest feature: the last hidden state comes out normalised, the ones before it do not
    with first_layers(body, max(idx) + 1):
        pre, gen, chunks = _body_forward(body, seq, L, c, s, G, documents, shared, output_hidden_states=True)
    if chunks is None:
        feats = token_features(pre.hidden_states, idx)
    else:
        feats = torch.cat([token_features(pre.hidden_states, idx)[chunks[1]], token_features(gen.hidden_states, idx)],
                          dim=1)  # fmt: skip
    return pool_blocks(feats, L, c, s, G, pooling)
