"""``sdpa_decode``: transformers' SDPA attention, with one-token bf16/fp16 queries on a CPU as two matrix products.

PyTorch's CPU kernel for ``scaled_dot_product_attention`` is slow for a single query token in bf16: on the current
machine (1 thread, SmolLM2-135M's 9 query and 3 key-value heads, 64 rows, 340 cached tokens) one layer's call takes
about 25 ms in bf16 against 6 ms in fp32, and attention then takes about 70 % of a cached decoding step of the bf16
model the evaluations sample with (``python -m benchmarks.decode_step``). For those calls this kernel computes the
attention as transformers' eager kernel does (scores as a product in the model's dtype, softmax in fp32, product with
the values) but reads the key-value heads through a view of the query heads grouped over them instead of copying
each key-value head for every query head. Every other call (several query tokens: prefill, training, the strided
sampler; fp32; CUDA; dropout) goes to transformers' SDPA kernel unchanged, so it reads the same masks as ``sdpa``
(booleans, True: attend) and computes the same values outside those calls. Inside them it differs from SDPA by
rounding only (``tests/test_models.py``).
"""

from __future__ import annotations

import torch

NAME = "sdpa_decode"


def _uses_products(query: torch.Tensor, dropout: float, module) -> bool:
    return (
        query.shape[2] == 1
        and query.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float16)
        and not (dropout and module.training)
    )


def sdpa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: (B, H, q, D) query, (B, KV, T, D) keys and values in; the
    (B, q, H, D) output and no weights out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _uses_products(query, dropout, module) or kwargs.get("s_aux") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    B, H, _, D = query.shape
    KV, T = key.shape[1], key.shape[2]
    if H % KV:
        raise ValueError(f"{H} query heads do not group over {KV} key-value heads")
    scale = D**-0.5 if scaling is None else scaling
    q = query.reshape(B, KV, H // KV, D)  # the query heads that share each key-value head, as rows
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # (B, KV, H/KV, T)
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, :T]  # (B or 1, 1, 1, T): this token's row
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, KV, H/KV, D)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``sdpa_decode`` an ``attn_implementation`` of transformers, with SDPA's masks (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, sdpa_decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
