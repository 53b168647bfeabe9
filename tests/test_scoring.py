"""The shared-prefix and chunked-logits paths of EBFT's scoring against the whole-sequence computation they replace:
token by token (log-probabilities, CE, features) and parameter by parameter (gradients)."""

import pytest
import torch
from test_strided import CTX_LAYOUT, ctx_batch, make_ctx_model

from ebft import scoring, strided
from ebft.losses import token_nll

TEMPERATURE = 0.7
GAMMA = 0.3


def batch(with_documents: bool):
    """Rows of strided sequences (some chunks duplicated, as the trainer's n copies are), their CE targets (a function
    of the chunk, as the trainer's are), documents, and per-token weights standing in for advantages."""
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch("mixed", with_documents)  # rows: chunk 2, chunk 0, chunk 0, chunk 1
    R, NB = chunks.shape[0], strided.num_blocks(L, c, s, G)
    g = torch.Generator().manual_seed(11)
    seq = strided.strided_sequence(chunks, torch.randint(0, 128, (R, NB, G), generator=g))
    targets = chunks % 5 != 0
    targets[:, 0] = False
    weights = torch.randn(R, NB, G, generator=g)
    return seq, targets, docs, weights


def whole_sequence_reference(model, seq, targets, docs):
    """Today's computation: one forward over every row's S tokens, full logits, then log-probs and token_nll."""
    L, c, s, G = CTX_LAYOUT
    logits = strided.strided_forward(model, seq, L, c, s, G, docs)
    logp = strided.generated_logprobs(logits, seq, L, c, s, G, TEMPERATURE)
    nll, _ = token_nll(logits[:, :L], seq[:, :L], targets)
    return logp, nll


def loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    logp, nll = fn()
    _, _, _, weights = BATCHES[fn.with_documents]
    ((weights * logp).sum() + GAMMA * nll.sum()).backward()
    return logp.detach(), nll.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


BATCHES = {flag: batch(flag) for flag in (False, True)}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
@pytest.mark.parametrize(("shared", "chunk"), [(True, 0), (True, 7), (False, 7)], ids=["shared", "shared-chunked",
                                                                                       "whole-chunked"])  # fmt: skip
def test_policy_scores_equal_the_whole_sequence_computation(attention, with_documents, shared, chunk):
    model = make_ctx_model(attention).train()
    L, c, s, G = CTX_LAYOUT
    seq, targets, docs, _ = BATCHES[with_documents]

    def reference():
        return whole_sequence_reference(model, seq, targets, docs)

    def candidate():
        return scoring.policy_scores(model, seq, L, c, s, G, temperature=TEMPERATURE, targets=targets,
                                     documents=docs, shared=shared, logits_chunk=chunk)  # fmt: skip

    reference.with_documents = candidate.with_documents = with_documents
    want_logp, want_nll, want_grads = loss_and_grads(model, reference)
    logp, nll, grads = loss_and_grads(model, candidate)
    torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)  # every generated token
    torch.testing.assert_close(nll, want_nll, rtol=1e-5, atol=1e-5)  # every row's CE
    assert grads.keys() == want_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():  # every parameter, the shared prefix's included; fp32 rounding of sums
        want = want_grads[name]  # whose terms reach the gradient's largest entry
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=2e-6 * float(want.abs().max()), msg=name)
    assert want_logp.abs().min() > 0 and GAMMA * want_nll.sum() > 0  # both terms take part


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_shared_prefix_features_equal_the_whole_sequence_features(attention, with_documents, pooling):
    model = make_ctx_model(attention)
    L, c, s, G = CTX_LAYOUT
    seq, _, docs, _ = BATCHES[with_documents]
    kw = dict(layers=[0.5, 1.0], pooling=pooling, documents=docs)
    whole = scoring.strided_features(model, seq, L, c, s, G, shared=False, **kw)
    shared = scoring.strided_features(model, seq, L, c, s, G, shared=True, **kw)
    for a, b in zip(whole, shared, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_chunked_log_probabilities_hold_one_chunk_of_logits_for_the_backward_pass():
    """With chunks, the backward pass keeps the hidden states, not every chunk's (positions × vocabulary) logits: the
    tensors saved for backward shrink, and the gradient is the same."""
    g = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(16, 5000, bias=False)
    hidden = torch.randn(64, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 5000, (64,), generator=g)
    saved, grads = {}, {}
    for chunk in (0, 8):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = scoring.head_logprobs(head, hidden, targets, 0.7, chunk)
        hidden.grad = None
        out.sum().backward()
        saved[chunk], grads[chunk] = sum(sizes), hidden.grad.clone()
    torch.testing.assert_close(grads[8], grads[0])
    assert saved[0] >= 64 * 5000 and saved[8] < 64 * 5000 / 4


def test_a_model_with_transformed_logits_is_refused():
    model = make_ctx_model("sdpa")
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        scoring.output_head(model)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "whole"])
def test_features_run_only_the_layers_they_read_and_equal_the_full_forwards_hidden_states(shared):
    """The features at depths [0.25, 0.5] of a 4-layer model read hidden states 1 and 2: the forward runs 3 layers
    (one beyond the deepest, whose output comes out normalised), and they equal those of a forward through all."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ebft.features import pool_blocks, token_features

    config = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    L, c, s, G = CTX_LAYOUT
    seq, _, docs, _ = BATCHES[True]
    calls = []
    hooks = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(model.model.layers)]
    got = scoring.strided_features(model, seq, L, c, s, G, layers=[0.25, 0.5], pooling="mean", documents=docs,
                                   shared=shared)  # fmt: skip
    for hook in hooks:
        hook.remove()
    assert set(calls) == {0, 1, 2} and model.config.num_hidden_layers == 4  # and the config is restored
    with torch.no_grad():
        out = model.model(input_ids=seq, **strided.sequence_inputs(model, seq, L, c, s, G, docs), use_cache=False,
                          output_hidden_states=True)  # fmt: skip
    want = pool_blocks(token_features(out.hidden_states, [1, 2]), L, c, s, G, "mean")
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
