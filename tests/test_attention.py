import pytest
import torch
import torch.nn.functional as F

from ebft import attention
from ebft.models import load_causal_lm

H, KV, D = 6, 2, 16


def qkv(dtype, B=3, q_len=1, T=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = lambda heads, length: (B, heads, length, D)  # noqa: E731
    return tuple(torch.randn(shape(h, n), generator=g).to(dtype) for h, n in ((H, q_len), (KV, T), (KV, T)))


def left_padding(B=3, T=11, q_len=1):
    """A boolean 4-D mask (True: attend): row b's first 2·b keys are padding."""
    mask = torch.ones(B, 1, q_len, T, dtype=torch.bool)
    for b in range(B):
        mask[b, ..., : 2 * b] = False
    return mask


def reference(q, k, v, mask):
    """fp32 SDPA over the same (rounded) inputs, each key-value head copied for its query heads: (B, q, H, D)."""
    k, v = (x.float().repeat_interleave(H // KV, dim=1) for x in (k, v))
    return F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask).transpose(1, 2)


class Attention(torch.nn.Module):
    """What transformers' SDPA function reads from an attention layer."""

    num_key_value_groups = H // KV
    is_causal = False


MODULE = Attention().eval()


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "left-padding"])
def test_one_token_bf16_queries_are_attention_within_bf16_rounding(masked):
    q, k, v = qkv(torch.bfloat16)
    mask = left_padding() if masked else None
    out, weights = attention.sdpa_decode_attention(MODULE, q, k, v, mask)
    assert weights is None and out.shape == (3, 1, H, D) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(q, k, v, mask), atol=3e-2, rtol=3e-2)


def test_masked_keys_have_no_influence():
    q, k, v = qkv(torch.bfloat16)
    mask = left_padding()
    out, _ = attention.sdpa_decode_attention(MODULE, q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[2, :, :4], v2[2, :, :4] = 100.0, -100.0  # row 2's padding
    out2, _ = attention.sdpa_decode_attention(MODULE, q, k2, v2, mask)
    assert torch.equal(out, out2)


@pytest.mark.parametrize(("dtype", "q_len"), [(torch.float32, 1), (torch.bfloat16, 4)], ids=["fp32", "several"])
def test_every_other_call_is_transformers_sdpa_unchanged(dtype, q_len):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = qkv(dtype, q_len=q_len)
    mask = left_padding(q_len=q_len)
    out, _ = attention.sdpa_decode_attention(MODULE, q, k, v, mask)
    ref, _ = sdpa_attention_forward(MODULE, q, k, v, mask)
    assert torch.equal(out, ref)


def test_a_bf16_model_decodes_as_under_sdpa_and_through_the_products(tiny_model_dir, monkeypatch):
    """The profile setting reaches the model: a cached one-token step of a bf16 model goes through the products and
    gives SDPA's logits within bf16 rounding; the prefill is SDPA's exactly."""
    from transformers import DynamicCache

    taken = []
    uses = attention._uses_products
    monkeypatch.setattr(attention, "_uses_products", lambda *a: taken.append(uses(*a)) or taken[-1])
    ids = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = mask[2, :5] = 0  # left padding
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    logits = {}
    for kernel in ("sdpa", "sdpa_decode"):
        model = load_causal_lm(tiny_model_dir, dtype=torch.bfloat16, attention=kernel).eval()
        assert model.config._attn_implementation == kernel
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache).logits
            step_mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
            step = model(input_ids=ids[:, -1:], attention_mask=step_mask, position_ids=positions[:, -1:] + 1,
                         cache=cache).logits  # fmt: skip
        logits[kernel] = prefill, step
    assert taken and all(taken[-len(taken) // 2 :])  # the step's layers took the products; the prefill did not
    assert not any(taken[: len(taken) // 2])
    assert torch.equal(logits["sdpa"][0], logits["sdpa_decode"][0])
    torch.testing.assert_close(logits["sdpa_decode"][1].float(), logits["sdpa"][1].float(), atol=5e-2, rtol=5e-2)
