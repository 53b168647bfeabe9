"""Strided layout: mask and positions against a loop-built reference, visibility in a real model, and samplers."""

import pytest
import torch

from ebft import strided
from ebft.models import load_causal_lm

LAYOUTS = [(16, 4, 4, 4), (24, 8, 8, 8), (20, 4, 2, 4), (11, 3, 2, 2), (9, 1, 1, 1), (12, 4, 4, 8)]


def reference_layout(L, c, s, G):
    """Slow, obvious version of the spec's layout."""
    NB = (L - G - c) // s + 1
    S = L + NB * G
    where = {}  # strided index → ("x", i) or ("g", t, k)
    for i in range(L):
        where[i] = ("x", i)
    for t in range(G):
        for k in range(NB):
            where[L + t * NB + k] = ("g", t, k)
    mask = torch.zeros(S, S, dtype=torch.bool)
    pos = torch.zeros(S, dtype=torch.long)
    for q in range(S):
        wq = where[q]
        pos[q] = wq[1] if wq[0] == "x" else c + wq[2] * s + wq[1]
        for kv in range(S):
            wk = where[kv]
            if wq[0] == "x":
                mask[q, kv] = wk[0] == "x" and wk[1] <= wq[1]
            elif wk[0] == "x":
                mask[q, kv] = wk[1] < c + wq[2] * s
            else:
                mask[q, kv] = wk[2] == wq[2] and wk[1] <= wq[1]
    return mask, pos


@pytest.mark.parametrize("L,c,s,G", LAYOUTS)
def test_mask_and_positions_equal_a_loop_built_reference(L, c, s, G):
    mask, pos = reference_layout(L, c, s, G)
    assert torch.equal(strided.attention_mask(L, c, s, G), mask)
    assert torch.equal(strided.position_ids(L, c, s, G), pos)


def test_document_mask_confines_attention_to_one_document():
    L, c, s, G = 12, 2, 2, 2  # NB = 5
    docs = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2]])
    mask = strided.layout_mask(L, c, s, G, documents=docs)[0, 0]
    base, _ = reference_layout(L, c, s, G)
    d = strided.strided_documents(docs, L, c, s, G)[0]
    assert d[L:].tolist() == [docs[0, c + k * s - 1].item() for k in range(5)] * G
    for q in range(mask.shape[0]):
        for kv in range(mask.shape[1]):
            assert bool(mask[q, kv]) == (bool(base[q, kv]) and d[q] == d[kv])
    assert mask.any(dim=-1).all()  # every row sees at least itself


@pytest.mark.parametrize("L,c,s,G", [(16, 4, 3, 4), (10, 8, 1, 4), (20, 4, 0, 4)])
def test_layouts_where_the_stride_does_not_fit_are_refused(L, c, s, G):
    with pytest.raises(ValueError, match="s|L ≥ c \\+ G"):
        strided.attention_mask(L, c, s, G)
    with pytest.raises(ValueError):
        strided.position_ids(L, c, s, G)


def test_the_predictor_of_each_generated_token():
    L, c, s, G = 24, 8, 8, 8  # NB = 2
    pred = strided.predictor_index(L, c, s, G)
    assert pred[0].tolist() == [7, 15]  # t = 0: the last visible prompt token of each block
    assert pred[1].tolist() == [24, 25]  # t = 1: the block's own step-0 token
    assert pred[7].tolist() == [24 + 6 * 2, 24 + 6 * 2 + 1]
    # each predictor is visible to its generated token's row and sits at position one less
    mask, pos = strided.attention_mask(L, c, s, G), strided.position_ids(L, c, s, G)
    gen = strided.generated_index(L, 2, G)
    assert bool(mask[gen, pred].all())
    assert torch.equal(pos[pred] + 1, pos[gen])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(tiny_model_dir).eval()


def strided_logits(model, seq, L, c, s, G):
    B, S = seq.shape
    mask = strided.attention_mask(L, c, s, G)
    pos = strided.position_ids(L, c, s, G)
    return model(input_ids=seq, attention_mask=mask[None, None].expand(B, 1, S, S),
                 position_ids=pos[None].expand(B, S)).logits  # fmt: skip


def test_a_block_sees_exactly_its_prefix_in_the_model(tiny):
    L, c, s, G = 32, 8, 4, 4
    NB = strided.num_blocks(L, c, s, G)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 1000, (1, L + NB * G), generator=g)
    gen = strided.generated_index(L, NB, G)
    k = 3  # visible prefix x[0 : 20]
    with torch.no_grad():
        base = strided_logits(tiny, seq, L, c, s, G)
        for j, visible in ((c + k * s, False), (L - 1, False), (c + k * s - 1, True), (0, True)):
            other = seq.clone()
            other[0, j] = (other[0, j] + 7) % 1000
            changed = strided_logits(tiny, other, L, c, s, G)
            same = torch.equal(changed[0, gen[:, k]], base[0, gen[:, k]])
            assert same != visible, f"token {j} {'should' if visible else 'should not'} reach block {k}"
        # a token of another block never reaches block k
        other = seq.clone()
        other[0, gen[0, k + 1]] += 1
        assert torch.equal(strided_logits(tiny, other, L, c, s, G)[0, gen[:, k]], base[0, gen[:, k]])


def test_greedy_strided_blocks_equal_per_prefix_greedy_decoding(tiny):
    L, c, s, G = 38, 8, 8, 6
    g = torch.Generator().manual_seed(1)
    chunks = torch.randint(0, 49152, (2, L), generator=g)
    blocks = strided.sample_blocks(tiny, chunks, c, s, G, temperature=0.0)
    for b in range(2):
        for k in range(blocks.shape[1]):
            seq = chunks[b : b + 1, : c + k * s]
            for _ in range(G):
                with torch.no_grad():
                    nxt = tiny(input_ids=seq).logits[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
            assert blocks[b, k].tolist() == seq[0, c + k * s :].tolist()


def cached_and_uncached(model, chunks, csg, *, seed, **kw):
    """[cached, uncached] draws of the same chunks from generators with the same seed."""
    return [strided.sample_blocks(model, chunks, *csg, use_cache=cached, generator=torch.Generator().manual_seed(seed),
                                  **kw) for cached in (True, False)]  # fmt: skip


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_cached_and_uncached_samplers_draw_identical_tokens(tiny, top_p):
    L, c, s, G = 48, 8, 8, 8
    chunks = torch.randint(0, 49152, (2, L), generator=torch.Generator().manual_seed(2)).repeat_interleave(3, dim=0)
    draws = cached_and_uncached(tiny, chunks, (c, s, G), seed=3, temperature=1.0, top_p=top_p)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0][0], draws[0][1])  # copies of a chunk are sampled independently


@pytest.mark.parametrize("cached", [True, False])
def test_a_chunks_stream_fixes_its_rollouts_whatever_shares_its_batch(tiny, cached):
    """With one generator per chunk, a chunk's n rollouts depend only on its own stream: sampled alone, or after
    another chunk in a batch of two (as one process of two, or one process of one, samples it), they are the same.
    Regression: one stream per batch, so two processes drew other rollouts than one."""
    L, c, s, G, n = 32, 4, 4, 4, 3
    a, b = torch.randint(0, 49152, (2, L), generator=torch.Generator().manual_seed(8))

    def draw(chunks, seeds):
        gens = [torch.Generator().manual_seed(x) for x in seeds]
        return strided.sample_blocks(tiny, torch.stack(chunks).repeat_interleave(n, dim=0), c, s, G, temperature=1.0,
                                     use_cache=cached, generator=gens)  # fmt: skip

    both = draw([a, b], [11, 12])
    assert torch.equal(both[:n], draw([a], [11])) and torch.equal(both[n:], draw([b], [12]))
    assert torch.equal(draw([b, a], [12, 11]), torch.cat([both[n:], both[:n]]))  # the order of chunks does not matter
    assert not torch.equal(both[0], both[1])  # the copies of a chunk are still sampled independently
    with pytest.raises(ValueError, match="equal groups"):
        draw([a, b], [11, 12, 13, 14])  # 4 streams cannot split 6 rows


@pytest.mark.slow
def test_cached_and_uncached_samplers_agree_on_smollm2(smollm2_dir):
    model = load_causal_lm(smollm2_dir).eval()
    from ebft.models import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n" * 3
    chunk = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:64]]).repeat(2, 1)
    draws = [
        strided.sample_blocks(
            model, chunk, 8, 8, 8, temperature=0.6, use_cache=cached, generator=torch.Generator().manual_seed(0)
        )  # fmt: skip
        for cached in (True, False)
    ]
    assert torch.equal(draws[0], draws[1])


def test_samplers_agree_with_documents_and_ignore_other_documents(tiny):
    L, c, s, G = 32, 8, 4, 4
    g = torch.Generator().manual_seed(5)
    chunks = torch.randint(0, 49152, (2, L), generator=g).repeat_interleave(2, dim=0)
    docs = (torch.arange(L) >= 13).long()[None].expand(4, L).contiguous()  # document 1 starts at token 13
    kw = dict(temperature=1.0, documents=docs)
    a = strided.sample_blocks(tiny, chunks, c, s, G, use_cache=True, generator=torch.Generator().manual_seed(6), **kw)
    b = strided.sample_blocks(tiny, chunks, c, s, G, use_cache=False, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b)
    other = chunks.clone()
    other[:, :13] = (other[:, :13] + 1) % 49152  # change all of document 0
    greedy = dict(temperature=0.0, documents=docs)
    before = strided.sample_blocks(tiny, chunks, c, s, G, **greedy)
    after = strided.sample_blocks(tiny, other, c, s, G, **greedy)
    later = [k for k in range(before.shape[1]) if c + k * s - 1 >= 13]  # blocks anchored in document 1
    assert later and torch.equal(before[:, later], after[:, later])
    assert not torch.equal(before[:, : later[0]], after[:, : later[0]])


def test_sampler_options_are_checked(tiny):
    chunks = torch.zeros(1, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        strided.sample_blocks(tiny, chunks, 4, 4, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        strided.sample_blocks(tiny, chunks, 4, 4, 4, temperature=1.0, top_p=0.0)


# The cached sampler against the uncached one and against plain per-prefix generation, for any order of rows.
# torch.unique sorts the rows it deduplicates, so a batch whose rows are not in sorted order must be gathered back to
# batch order after the prefill, logits and KV cache alike, whether or not any chunk is duplicated.

CTX_LAYOUT = (24, 5, 3, 4)  # L, c, s, G: NB = 6
ROW_ORDERS = {  # indices into the keys in torch.unique (sorted) order; never sorted themselves
    "distinct": [2, 0, 1],  # every chunk once (U == B)
    "duplicated": [2, 2, 2, 1, 1, 1, 0, 0, 0],  # n copies of each, as the trainer's repeat_interleave makes them
    "mixed": [2, 0, 0, 1],  # some duplicated, some not
}


def make_ctx_model(attention: str):
    """A tiny random Llama whose greedy tokens depend on earlier context (attention scaled up so that it matters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, tie_word_embeddings=True, attn_implementation=attention,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)  # sharper attention
            layer.self_attn.k_proj.weight.mul_(8.0)
            layer.self_attn.o_proj.weight.mul_(16.0)  # attention outputs that outweigh the token's own embedding
    return model


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def ctx_model(request):
    """The context model under each attention implementation the profile offers (``attention``)."""
    return make_ctx_model(request.param)


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
def test_eager_attention_reads_the_strided_mask_as_sdpa_does(with_documents):
    """Regression: transformers passes a 4-D mask to the kernel unchanged and eager *adds* it to the scores, so the
    boolean layout mask masked nothing under eager (logits off by up to 0.8 on this model)."""
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch("distinct", with_documents)
    NB = strided.num_blocks(L, c, s, G)
    seq = torch.cat(
        [chunks, torch.randint(0, 128, (chunks.shape[0], NB * G), generator=torch.Generator().manual_seed(3))], 1
    )
    sdpa, eager = make_ctx_model("sdpa"), make_ctx_model("eager")
    assert strided.attention_kernel(eager) == "eager" and strided.attention_kernel(sdpa) == "sdpa"
    with torch.no_grad():
        want = strided.strided_forward(sdpa, seq, L, c, s, G, docs)
        got = strided.strided_forward(eager, seq, L, c, s, G, docs)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    features = [strided_features_of(m, seq, docs) for m in (sdpa, eager)]
    for a, b in zip(*features, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def strided_features_of(model, seq, docs):
    from ebft.scoring import strided_features

    L, c, s, G = CTX_LAYOUT
    return strided_features(model, seq, L, c, s, G, layers=[0.5, 1.0], pooling="mean", documents=docs)


def ctx_batch(kind: str, with_documents: bool):
    """(chunks, documents or None) whose rows are three distinct dedup keys arranged as ROW_ORDERS[kind]."""
    L = CTX_LAYOUT[0]
    g = torch.Generator().manual_seed(7)
    if with_documents:  # two rows share their tokens and differ only in where document 1 starts
        a, b = torch.randint(0, 128, (2, L), generator=g)
        tokens = torch.stack([a, a, b])
        docs = (torch.arange(L)[None] >= torch.tensor([[9], [14], [11]])).long()
        keys = torch.cat([tokens, docs], dim=1)
    else:
        keys = torch.randint(0, 128, (3, L), generator=g)
    keys = torch.unique(keys, dim=0)[ROW_ORDERS[kind]]
    inverse = torch.unique(keys, dim=0, return_inverse=True)[1]
    assert torch.unique(keys, dim=0).shape[0] == 3
    assert not torch.equal(inverse, inverse.sort().values), "rows must not be in torch.unique order"
    return keys[:, :L], (keys[:, L:] if with_documents else None)


def per_prefix_greedy(model, tokens: torch.Tensor, start: int, end: int, G: int) -> list[int]:
    """G greedy tokens after tokens[start : end], a plain causal sequence at positions start, start + 1, …"""
    seq = tokens[None, start:end]
    for _ in range(G):
        pos = torch.arange(start, start + seq.shape[1])[None]
        with torch.no_grad():
            nxt = model(input_ids=seq, position_ids=pos, use_cache=False).logits[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, end - start :].tolist()


def test_the_context_model_continues_differently_when_an_early_token_changes(ctx_model):
    L, c, s, G = CTX_LAYOUT
    chunks, _ = ctx_batch("distinct", False)
    end = c + 5 * s  # the last block's prefix
    for b in range(chunks.shape[0]):
        other = chunks[b].clone()
        other[0] = (other[0] + 1) % 128
        assert per_prefix_greedy(ctx_model, other, 0, end, G) != per_prefix_greedy(ctx_model, chunks[b], 0, end, G)


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
@pytest.mark.parametrize("kind", list(ROW_ORDERS))
def test_cached_greedy_equals_uncached_and_per_prefix_generation_in_any_row_order(ctx_model, kind, with_documents):
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch(kind, with_documents)
    cached = strided.sample_blocks(ctx_model, chunks, c, s, G, temperature=0.0, use_cache=True, documents=docs)
    uncached = strided.sample_blocks(ctx_model, chunks, c, s, G, temperature=0.0, use_cache=False, documents=docs)
    reference = torch.zeros_like(cached)
    done = {}  # copies of a chunk share their greedy blocks
    for b in range(chunks.shape[0]):
        key = (tuple(chunks[b].tolist()), None if docs is None else tuple(docs[b].tolist()))
        if key in done:
            reference[b] = reference[done[key]]
            continue
        done[key] = b
        for k in range(cached.shape[1]):
            end = c + k * s
            start = 0 if docs is None else int((docs[b] == docs[b, end - 1]).nonzero()[0])  # the anchor's document
            reference[b, k] = torch.tensor(per_prefix_greedy(ctx_model, chunks[b], start, end, G))
    assert torch.equal(uncached, reference)
    assert torch.equal(cached, reference), f"cached greedy agrees on {(cached == reference).float().mean():.0%}"


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
@pytest.mark.parametrize("kind", list(ROW_ORDERS))
def test_cached_and_uncached_samplers_draw_identical_tokens_in_any_row_order(ctx_model, kind, with_documents):
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch(kind, with_documents)
    draws = cached_and_uncached(ctx_model, chunks, (c, s, G), seed=11, temperature=1.0, documents=docs)
    assert torch.equal(draws[0], draws[1]), f"cached and uncached agree on {(draws[0] == draws[1]).float().mean():.0%}"


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampled_tokens_follow_the_nucleus_distribution(top_p):
    """draw_tokens against the distribution it samples: 40,000 draws of a fixed 6-token distribution (one row per
    draw) match its probabilities within 4 standard errors, never pick a token outside the nucleus, and one list of
    per-group generators draws what the groups would draw alone."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0])
    T = 0.7
    p = torch.softmax(logits / T, dim=-1).double()
    if top_p < 1:
        keep = p.cumsum(0) - p <= top_p  # the smallest set reaching top_p (p is sorted)
        p = torch.where(keep, p, 0) / p[keep].sum()
    N = 40_000
    tokens = strided.draw_tokens(logits.expand(N, -1), T, top_p, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=6).double() / N
    assert (freq[p == 0] == 0).all()
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / N).sqrt() + 1e-12).all(), (freq, p)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    grouped = strided.draw_tokens(logits.expand(8, -1), T, top_p, gens())
    alone = [strided.draw_tokens(logits.expand(4, -1), T, top_p, g) for g in gens()]
    assert torch.equal(grouped, torch.cat(alone))


def stable_sort_draws(logits, T, top_p, generator):
    """The nucleus by its definition: a stable descending sort of the whole vocabulary (ties in token-id order), the
    smallest prefix reaching top_p, then inverse-CDF sampling in token-id order."""
    probs = torch.softmax(logits.float() / T, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    sorted_p = sorted_p.masked_fill(sorted_p.cumsum(dim=-1) - sorted_p > top_p, 0.0)
    probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    u = torch.rand(len(probs), generator=generator, dtype=torch.float64)
    cdf = probs.double().cumsum(dim=-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1), probs > 0


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_the_nucleus_breaks_ties_by_token_id_and_grows_past_its_first_guess(top_p):
    """Regression: the nucleus came from torch.sort, whose order of equal probabilities (frequent with bf16 logits) is
    unspecified, so tokens tied at the nucleus's edge were kept or dropped by the sort's internals. Now ties go to the
    lower token ids: the nucleus and the draws equal those of a stable sort, for bf16 logits full of ties, for peaked
    rows and for near-flat rows whose nucleus holds thousands of tokens (top-k grown past 64)."""
    g = torch.Generator().manual_seed(0)
    V = 8192
    logits = torch.cat(
        [
            (torch.randn(24, V, generator=g) * 3).bfloat16().float(),  # many ties
            torch.randint(0, 3, (24, V), generator=g).float(),  # three values only
            torch.randn(8, V, generator=g) * 0.01,  # near-flat: the nucleus holds thousands of tokens
        ]
    )
    logits[:8, :3] += 12  # peaked rows
    for T in (0.6, 1.0):
        probs = torch.softmax(logits / T, dim=-1)
        expected, kept = stable_sort_draws(logits, T, top_p, torch.Generator().manual_seed(1))
        assert torch.equal(strided.nucleus(probs, top_p), kept)
        assert torch.equal(strided.draw_tokens(logits, T, top_p, torch.Generator().manual_seed(1)), expected)
    assert kept[-8:].sum(dim=-1).min() > 64  # top-k grew past its first guess
