"""The strided machinery on every model family the project supports (``ebft.models.SUPPORTED_ARCHITECTURES``), each a
tiny random model (fixed seed, fp32, eval mode, attention sharpened so that greedy tokens depend on context), under
both attention kernels: the cached and uncached samplers against plain per-prefix generation; the policy's
log-probabilities, CE and gradients and the feature network's block features, whole and with the shared prefix,
against plain per-prefix forwards; LoRA's default targets; and the refusal of a family the project cannot vouch for.

Llama is SmolLM2's family, Qwen2 the paper's Qwen2.5's (biases on q, k and v), GPT-2 the odd one out (learned
absolute position embeddings that the strided layout's position ids must reach, Conv1D layers, blocks in ``h``);
Gemma (scaled embeddings), Phi (parallel attention and MLP, partial rotary, a biased output head) and Mistral (with
no sliding window) complete the list. Nothing is downloaded."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from test_strided import CTX_LAYOUT, ctx_batch, per_prefix_greedy

from ebft import scoring, strided
from ebft.config import FinetuneConfig, LoraSettings, build
from ebft.errors import ConfigError, UserError
from ebft.features import token_features
from ebft.losses import token_nll
from ebft.models import SUPPORTED_ARCHITECTURES, make_trainable, require_supported
from ebft.schema import profile_schema

FAMILIES = ("llama", "qwen2", "gpt2", "gemma", "phi", "mistral")
V = 128  # ctx_batch's vocabulary
LAYERS = 4
TEMPERATURE = 0.7
FEATURE_LAYERS = [0.25, 0.5]  # hidden states 1 and 2 of 4: the features run 3 layers
OLD_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
LINEAR_LAYERS = {  # every linear layer of a decoder block, within the block: what 'all-linear' wraps (not the head)
    "llama": ATTENTION | {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "qwen2": ATTENTION | {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "mistral": ATTENTION | {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "gemma": ATTENTION | {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "phi": ATTENTION | {"self_attn.dense", "mlp.fc1", "mlp.fc2"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},  # Conv1D layers
}


def tiny_config(family: str, attention: str):
    import transformers

    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=LAYERS, n_head=4, n_inner=128, n_positions=64,
                                       bos_token_id=0, eos_token_id=0, attn_implementation=attention)  # fmt: skip
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "gemma": transformers.GemmaConfig,
           "phi": transformers.PhiConfig, "mistral": transformers.MistralConfig}[family]  # fmt: skip
    extra = {"gemma": {"head_dim": 16}, "mistral": {"sliding_window": None}}.get(family, {})
    return cls(vocab_size=V, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
               attn_implementation=attention, **extra)  # fmt: skip


def decoder_layers(model):
    body = scoring.backbone(model)
    return body.h if hasattr(body, "h") else body.layers


def make_model(family: str, attention: str):
    """A tiny random ``family`` model whose greedy tokens depend on context and on positions: every bias random
    (Qwen2's q/k/v biases included), queries and keys scaled up with their biases (sharper attention), attention
    outputs scaled up (they outweigh the token's own embedding; not their biases, which would drown GPT-2's small
    embeddings) and GPT-2's position embeddings scaled up."""
    from transformers import AutoModelForCausalLM

    def scale(module, factor, rows=slice(None), bias=True):  # a Linear's output rows; a Conv1D's output columns
        weight = module.weight if hasattr(module, "nf") else module.weight.T
        weight[:, rows].mul_(factor)
        if bias and module.bias is not None:
            module.bias[rows].mul_(factor)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(family, attention)).float().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.02)
            for layer in decoder_layers(model):
                attn = getattr(layer, "self_attn", None) or layer.attn
                if hasattr(attn, "c_attn"):  # GPT-2: one Conv1D (hidden → 3·hidden) for q, k and v
                    scale(attn.c_attn, 16.0, slice(0, 2 * attn.c_attn.nf // 3))
                    scale(attn.c_proj, 16.0, bias=False)
                else:
                    scale(attn.q_proj, 16.0)
                    scale(attn.k_proj, 16.0)
                    scale(getattr(attn, "o_proj", None) or attn.dense, 16.0, bias=False)
            if family == "gpt2":
                model.transformer.wpe.weight.mul_(4.0)
    assert model.config.model_type == family and strided.attention_kernel(model) == attention
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for these tiny models: a second one's share of each small operation gains little, and on a
    busy machine its waits dominated (this file took 176 s instead of 16 s on two cores shared with other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=[(f, a) for f in FAMILIES for a in ("sdpa", "eager")], ids="-".join)
def model(request):
    return make_model(*request.param)


def test_every_supported_family_is_tested():
    assert set(FAMILIES) == set(SUPPORTED_ARCHITECTURES)


def test_the_model_reads_context_and_the_layouts_positions(model):
    """What makes the comparisons below able to fail: an early token changes the greedy continuation, and the strided
    layout's position ids (not 0 … S − 1) change the generated tokens' logits and some greedy token."""
    L, c, s, G = CTX_LAYOUT
    chunks, _ = ctx_batch("distinct", False)
    end = c + 5 * s  # the last block's prefix
    for b in range(chunks.shape[0]):
        other = chunks[b].clone()
        other[0] = (other[0] + 1) % V
        assert per_prefix_greedy(model, other, 0, end, G) != per_prefix_greedy(model, chunks[b], 0, end, G)
    NB = strided.num_blocks(L, c, s, G)
    seq = strided.strided_sequence(chunks, torch.randint(0, V, (3, NB, G), generator=torch.Generator().manual_seed(4)))
    inputs = strided.sequence_inputs(model, seq, L, c, s, G)
    gen = strided.generated_index(L, NB, G).flatten()
    with torch.no_grad():
        right = model(input_ids=seq, **inputs, use_cache=False).logits[:, gen]
        wrong = model(input_ids=seq, attention_mask=inputs["attention_mask"], use_cache=False).logits[:, gen]
    assert not torch.equal(right.argmax(-1), wrong.argmax(-1))


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
def test_greedy_blocks_equal_cached_uncached_and_per_prefix_generation(model, with_documents):
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch("mixed", with_documents)  # a duplicated chunk, rows not in torch.unique's order
    cached = strided.sample_blocks(model, chunks, c, s, G, temperature=0.0, use_cache=True, documents=docs)
    uncached = strided.sample_blocks(model, chunks, c, s, G, temperature=0.0, use_cache=False, documents=docs)
    reference = torch.zeros_like(cached)
    for b in range(chunks.shape[0]):
        for k in range(cached.shape[1]):
            end = c + k * s
            start = document_start(docs, b, end - 1)  # within the anchor's document
            reference[b, k] = torch.tensor(per_prefix_greedy(model, chunks[b], start, end, G))
    assert torch.equal(uncached, reference), f"uncached greedy agrees on {(uncached == reference).float().mean():.0%}"
    assert torch.equal(cached, reference), f"cached greedy agrees on {(cached == reference).float().mean():.0%}"


@pytest.mark.parametrize(("with_documents", "top_p"), [(False, 1.0), (True, 0.9)], ids=["plain", "documents-top_p"])
def test_cached_and_uncached_samplers_draw_identical_tokens(model, with_documents, top_p):
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch("duplicated", with_documents)
    draws = [strided.sample_blocks(model, chunks, c, s, G, temperature=1.0, top_p=top_p, use_cache=cached,
                                   documents=docs, generator=torch.Generator().manual_seed(11))
             for cached in (True, False)]  # fmt: skip
    assert torch.equal(draws[0], draws[1]), f"cached and uncached agree on {(draws[0] == draws[1]).float().mean():.0%}"
    assert not torch.equal(draws[0][0], draws[0][1])  # copies of a chunk are sampled independently


# Per-prefix references: plain causal forwards, no strided layout, positions counted from the chunk's start


def document_start(docs, b: int, j: int) -> int:
    """Where the document of token j of row b starts (0 without documents)."""
    return 0 if docs is None else int((docs[b] == docs[b, j]).nonzero()[0])


def plain_forward(model, tokens: torch.Tensor, start: int, **kw):
    """One causal forward over tokens (n,) at positions start, start + 1, …"""
    pos = torch.arange(start, start + len(tokens))[None]
    return model(input_ids=tokens[None], position_ids=pos, use_cache=False, **kw)


def per_prefix_scores(model, seq, targets, docs):
    """log π(ŷ)/T of every generated token from a forward over its block's prefix (within its anchor's document) and
    the block's earlier tokens; the chunk's CE from one forward per document: (R, NB, G), (R,)."""
    L, c, s, G = CTX_LAYOUT
    R, NB = seq.shape[0], strided.num_blocks(L, c, s, G)
    blocks = seq[:, L:].view(R, G, NB).transpose(1, 2)  # (R, NB, G)
    logp = torch.zeros(R, NB, G)
    nll = []
    for b in range(R):
        for k in range(NB):
            end = c + k * s
            start = document_start(docs, b, end - 1)
            logits = plain_forward(model, torch.cat([seq[b, start:end], blocks[b, k, :-1]]), start).logits[0]
            row = torch.log_softmax(logits[-G:].float() / TEMPERATURE, dim=-1)
            logp[b, k] = row.gather(-1, blocks[b, k][:, None]).squeeze(-1)
        cuts = [0, *(j for j in range(1, L) if docs is not None and docs[b, j] != docs[b, j - 1]), L]
        logits = torch.cat([plain_forward(model, seq[b, i:j], i).logits[0] for i, j in zip(cuts[:-1], cuts[1:],
                                                                                           strict=True)])  # fmt: skip
        nll.append(token_nll(logits[None], seq[b : b + 1, :L], targets[b : b + 1])[0])
    return logp, torch.cat(nll)


def scored_batch(with_documents: bool):
    L, c, s, G = CTX_LAYOUT
    chunks, docs = ctx_batch("mixed", with_documents)
    R, NB = chunks.shape[0], strided.num_blocks(L, c, s, G)
    g = torch.Generator().manual_seed(12)
    seq = strided.strided_sequence(chunks, torch.randint(0, V, (R, NB, G), generator=g))
    targets = chunks % 5 != 0
    targets[:, 0] = False
    return seq, targets, docs, torch.randn(R, NB, G, generator=g)


def loss_and_grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    logp, nll = fn()
    ((weights * logp).sum() + 0.3 * nll.sum()).backward()
    return logp.detach(), nll.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
def test_policy_scores_and_gradients_equal_per_prefix_forwards(model, with_documents):
    """Log-probabilities, CE and every parameter's gradient, whole and with the shared prefix, against per-prefix
    forwards (eval mode: the same computation as training without dropout). Each computation sums a gradient's many
    terms in its own order, which the sharpened attention amplifies: the two strided paths agree to within 4e-6 of a
    gradient's largest entry (checked to 1e-5), and with the per-prefix forwards, whose sums differ most, to within
    1.1e-5 (checked to 5e-5)."""
    L, c, s, G = CTX_LAYOUT
    seq, targets, docs, weights = scored_batch(with_documents)
    want_logp, want_nll, want_grads = loss_and_grads(model, lambda: per_prefix_scores(model, seq, targets, docs),
                                                     weights)  # fmt: skip
    assert len(want_grads) == len(list(model.parameters()))
    grads = {}
    for shared in (True, False):

        def scores(shared=shared):
            return scoring.policy_scores(model, seq, L, c, s, G, temperature=TEMPERATURE, targets=targets,
                                         documents=docs, shared=shared)  # fmt: skip

        logp, nll, grads[shared] = loss_and_grads(model, scores, weights)
        torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=2e-5, msg=f"log-probs, shared={shared}")
        torch.testing.assert_close(nll, want_nll, rtol=1e-5, atol=1e-4, msg=f"CE, shared={shared}")
        assert grads[shared].keys() == want_grads.keys()
    model.zero_grad(set_to_none=True)
    for name, want in want_grads.items():
        top = float(want.abs().max())
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-5 * top, msg=name)
        torch.testing.assert_close(grads[True][name], want, rtol=1e-4, atol=5e-5 * top, msg=name)


def per_prefix_features(model, seq, docs):
    """Ground-truth and generated block features (mean pooling) from plain forwards through every layer: the chunk's
    tokens within their own document, each block's tokens after its prefix within its anchor's document."""
    L, c, s, G = CTX_LAYOUT
    R, NB = seq.shape[0], strided.num_blocks(L, c, s, G)
    idx = [int(q * LAYERS) for q in FEATURE_LAYERS]
    blocks = seq[:, L:].view(R, G, NB).transpose(1, 2)
    gt, gen = [], []
    with torch.no_grad():
        for b in range(R):
            for k in range(NB):
                end = c + k * s
                start = document_start(docs, b, end - 1)
                truth = plain_forward(model, seq[b, start : end + G], start, output_hidden_states=True)
                rollout = plain_forward(model, torch.cat([seq[b, start:end], blocks[b, k]]), start,
                                        output_hidden_states=True)  # fmt: skip
                gt.append(token_features(truth.hidden_states, idx)[0, -G:].mean(dim=0))
                gen.append(token_features(rollout.hidden_states, idx)[0, -G:].mean(dim=0))
    return torch.stack(gt).view(R, NB, -1), torch.stack(gen).view(R, NB, -1)


@pytest.mark.parametrize("with_documents", [False, True], ids=["plain", "documents"])
def test_block_features_equal_per_prefix_forwards_and_run_only_the_layers_they_read(model, with_documents):
    """Regression (GPT-2): the features ran every block of GPT-2's ``h`` whatever the config's layer count, and with
    the shared prefix the blocks beyond it found no layer in the KV cache (IndexError)."""
    L, c, s, G = CTX_LAYOUT
    seq, _, docs, _ = scored_batch(with_documents)
    want = per_prefix_features(model, seq, docs)
    calls = []
    layers = decoder_layers(model)
    hooks = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        for shared in (True, False):
            calls.clear()
            got = scoring.strided_features(model, seq, L, c, s, G, layers=FEATURE_LAYERS, pooling="mean",
                                           documents=docs, shared=shared)  # fmt: skip
            assert set(calls) == {0, 1, 2}, f"shared={shared} ran layers {sorted(set(calls))}"
            valid = torch.ones(seq.shape[0], strided.num_blocks(L, c, s, G), dtype=torch.bool)
            if docs is not None:  # where a block's ground truth crosses into the next document, it is never scored
                starts = c + torch.arange(valid.shape[1]) * s
                for g in range(G):
                    valid &= docs[:, starts + g] == docs[:, starts - 1]
            torch.testing.assert_close(got[0][valid], want[0][valid], rtol=1e-5, atol=1e-5, msg=f"truth, {shared}")
            torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=f"rollouts, shared={shared}")
    finally:
        for hook in hooks:
            hook.remove()
    assert model.config.num_hidden_layers == LAYERS and len(decoder_layers(model)) == LAYERS  # restored


# LoRA's default targets: every linear layer (peft's 'all-linear'), whatever the family calls them


def adapted(policy) -> dict[str, int]:
    """{module name within its decoder block: how many blocks have it} for every module LoRA wraps; a module outside
    the blocks (embeddings, output head) counts under its full name."""
    within = [re.sub(r"^.*?\.\d+\.", "", n) for n, m in policy.named_modules() if hasattr(m, "lora_A")]
    return {n: within.count(n) for n in set(within)}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_lora_wraps_every_linear_layer_and_trains_through_the_scores(family):
    """Regression: LoRA targeted Llama's seven projection names by default, so peft refused GPT-2 ("Target modules
    {...} not found") and left Phi's output projection and MLP untrained. Now 'all-linear' wraps every linear layer of
    every block (GPT-2's Conv1D layers included), never the output head, and one EBFT loss through the shared-prefix
    scores gives every adapter a finite gradient."""
    L, c, s, G = CTX_LAYOUT
    policy = make_trainable(make_model(family, "sdpa"), FinetuneConfig())
    assert FinetuneConfig().lora.target_modules == "all-linear"
    assert adapted(policy) == dict.fromkeys(LINEAR_LAYERS[family], LAYERS)
    seq, targets, _, weights = scored_batch(False)
    logp, nll = scoring.policy_scores(policy, seq, L, c, s, G, temperature=TEMPERATURE, targets=targets, shared=True)
    ((weights * logp).sum() + 0.3 * nll.sum()).backward()
    trained = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained.values())
    assert all(p.grad.abs().max() > 0 for n, p in trained.items() if "lora_B" in n)  # B starts at 0, A's grad too
    require_supported(policy)  # a peft-wrapped model is judged by its base model's type


def test_lora_targets_can_be_named_instead():
    policy = make_trainable(make_model("gpt2", "sdpa"), FinetuneConfig(lora=LoraSettings(target_modules=["c_attn"])))
    assert adapted(policy) == {"attn.c_attn": LAYERS}


def test_lora_targets_are_all_linear_or_a_list_of_names_in_the_builder_and_the_schema():
    import jsonschema

    where = "finetune.lora"
    assert build(LoraSettings, {}, where).target_modules == "all-linear"
    assert build(LoraSettings, {"target_modules": "all-linear"}, where).target_modules == "all-linear"
    assert build(LoraSettings, {"target_modules": ["c_attn", "c_fc"]}, where).target_modules == ["c_attn", "c_fc"]
    for bad in ("q_proj", 3, ["q_proj", 3], {"q_proj": True}, None):
        with pytest.raises(ConfigError, match=r"^config key 'finetune\.lora\.target_modules' is .*; it must be a list "
                                              r"of strings or 'all-linear'\.$"):  # fmt: skip
            build(LoraSettings, {"target_modules": bad}, where)
    with pytest.raises(ConfigError, match="at least 1 item"):
        build(LoraSettings, {"target_modules": []}, where)
    schema = jsonschema.Draft202012Validator(profile_schema()["$defs"]["LoraSettings"]["properties"]["target_modules"])
    assert [schema.is_valid(v) for v in ("all-linear", ["c_attn"], "q_proj", 3, [], ["q_proj", 3], None)] == [
        True, True, False, False, False, False, False]  # fmt: skip


@pytest.mark.parametrize("profile", ["cpu", "smoke"])
def test_the_committed_profiles_keep_naming_their_lora_targets(profile):
    """Their LoRA targets are named as the old default was, so their jobs' settings hashes (and the committed
    results' config_hash) did not move when 'all-linear' became the default."""
    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / f"{profile}.yaml").read_text())
    assert data["finetune"]["lora"]["target_modules"] == OLD_TARGETS


# A family the project cannot vouch for


def tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=V, hidden_size=16, word_embed_proj_dim=16, num_hidden_layers=1,
                                    ffn_dim=32, num_attention_heads=2, max_position_embeddings=64))  # fmt: skip


def test_a_family_the_project_cannot_vouch_for_is_refused_in_one_sentence():
    model = tiny_opt()
    for given in (model, model.config, make_trainable(model, FinetuneConfig())):
        with pytest.raises(UserError) as refused:
            require_supported(given, "EBFT")
        message = str(refused.value)
        assert message.startswith("EBFT cannot run on a model of type 'opt'") and message.count(". ") == 0
        assert ", ".join(SUPPORTED_ARCHITECTURES) in message and "SFT work for any causal LM" in message
    for family in FAMILIES:
        require_supported(make_model(family, "eager").config)


def test_sliding_window_attention_is_refused():
    """The strided 4-D mask replaces the mask a sliding window would make, so the window would silently not apply."""
    import transformers

    for config in (transformers.MistralConfig(sliding_window=16), transformers.Qwen2Config(use_sliding_window=True)):
        with pytest.raises(UserError, match="sliding-window attention .* set sliding_window to null"):
            require_supported(config)
    require_supported(transformers.Qwen2Config())  # Qwen2.5's configs name a window but do not use it


def test_the_fm_evaluation_refuses_an_unsupported_model(tmp_path):
    from ebft.config import EBFTConfig, FMEvalConfig
    from evals.fm import evaluate_fm

    tiny_opt().save_pretrained(tmp_path / "opt")
    with pytest.raises(UserError, match="^the held-out FM loss cannot run on a model of type 'opt'"):
        evaluate_fm(tmp_path / "opt", tmp_path / "opt", [], 24, EBFTConfig(), FMEvalConfig(), seed=0)
