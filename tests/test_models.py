import json
import time

import pytest
import torch

from ebft.config import ModelConfig
from ebft.errors import UserError
from ebft.models import load_causal_lm, load_gguf, load_tokenizer, prepare_model

TEXT = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"


@pytest.mark.slow
def test_converted_smollm2_gives_the_gguf_models_logits(smollm2_dir):
    tok_gguf, gguf_model = load_gguf()
    tok = load_tokenizer(smollm2_dir)
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok_gguf(TEXT, return_tensors="pt")["input_ids"].tolist()
    model = load_causal_lm(smollm2_dir)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert "quantization_config" not in model.config.to_dict()
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        ref = gguf_model(input_ids=ids).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert json.loads((smollm2_dir / "prepare.json").read_text())["source"] == "smollm2-gguf"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template


@pytest.mark.slow
def test_lm_eval_loads_the_converted_folder_offline(smollm2_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(smollm2_dir), device="cpu", batch_size=1, dtype="float32")
    context, continuation = "def add(a, b):", "\n    return a + b"
    req = Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=0)
    ((loglik, _greedy),) = lm.loglikelihood([req])
    tok = load_tokenizer(smollm2_dir)
    model = load_causal_lm(smollm2_dir)
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([whole])).logits.log_softmax(-1)[0]
    ours = sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole)))
    assert abs(loglik - ours) < 1e-3


def test_tiny_random_model_uses_smollm2_tokenizer(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    assert len(tok) == model.config.vocab_size == 49152
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.num_parameters() < 5_000_000


def test_hub_model_offline_fails_at_once_naming_the_model(tmp_path):
    started = time.time()
    with pytest.raises(UserError) as info:
        prepare_model(ModelConfig(source="Qwen/Qwen2.5-1.5B"), tmp_path / "m", offline=True)
    assert time.time() - started < 10
    assert "'Qwen/Qwen2.5-1.5B'" in str(info.value) and "offline" in str(info.value)
    assert not (tmp_path / "m").exists()


def test_hub_model_with_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    import ebft.hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ebft.hub, "hub_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(UserError, match="needs the Hugging Face hub, which is unreachable"):
        prepare_model(ModelConfig(source="Qwen/Qwen2.5-1.5B"), tmp_path / "m", offline=False)


def test_local_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        prepare_model(ModelConfig(source=str(tmp_path / "empty")), tmp_path / "m", offline=True)


def test_local_folder_is_copied(tmp_path, tiny_model_dir):
    prepare_model(ModelConfig(source=str(tiny_model_dir)), tmp_path / "copy", offline=True)
    a = load_causal_lm(tiny_model_dir).state_dict()
    b = load_causal_lm(tmp_path / "copy").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loading_an_unprepared_folder_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="is not a prepared model folder"):
        load_causal_lm(tmp_path)


def damaged(tiny_model_dir, tmp_path, damage):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    damage(folder)
    return folder


WEIGHTS = "model.safetensors"


@pytest.mark.parametrize(
    "damage,what",
    [
        (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:1000]), "weights"),  # truncated copy
        (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:-1000]), "weights"),  # cut off at the end
        (lambda d: (d / WEIGHTS).unlink(), "weights"),  # a folder without weights
        (lambda d: (d / "config.json").write_text('{"model_type": "llama",'), "config"),
        (lambda d: (d / "config.json").write_text('{"model_type": "no-such-model"}'), "config"),
    ],
)
def test_a_damaged_model_folder_is_one_sentence_naming_it_and_the_fix(tiny_model_dir, tmp_path, damage, what):
    """Regression: a truncated weights file, a folder without weights and a bad config.json died in transformers or
    safetensors with a traceback."""
    folder = damaged(tiny_model_dir, tmp_path, damage)
    with pytest.raises(UserError, match=rf"^the {what} in {folder} cannot be loaded \(.*\); delete the folder and "
                                        r"rerun 'ebft prepare-model'"):  # fmt: skip
        load_causal_lm(folder)


def test_a_damaged_tokenizer_is_one_sentence(tiny_model_dir, tmp_path):
    folder = damaged(tiny_model_dir, tmp_path, lambda d: (d / "tokenizer.json").write_text("{"))
    with pytest.raises(UserError, match=rf"^the tokenizer in {folder} cannot be loaded"):
        load_tokenizer(folder)


def _lora_forward_backward(model, ids, cast):
    from ebft.models import frozen_weights_cast

    model.zero_grad(set_to_none=True)
    with frozen_weights_cast(torch.bfloat16 if cast else None, model), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    (logits.float().logsumexp(-1).sum() + logits.float()[..., 0].sum()).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return logits, base, grads


def test_frozen_weight_casts_leave_outputs_and_gradients_bit_identical(tiny_model_dir):
    from ebft.config import FinetuneConfig
    from ebft.models import make_trainable

    torch.manual_seed(0)
    model = make_trainable(load_causal_lm(tiny_model_dir, dropout=0.0), FinetuneConfig(mode="lora"))
    for p in model.parameters():  # LoRA's B starts at zero: make the adapter matter
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    ids = torch.randint(0, 1000, (2, 24))
    weights = {name: p for name, p in model.named_parameters()}
    plain = _lora_forward_backward(model, ids, cast=False)
    cached = _lora_forward_backward(model, ids, cast=True)
    assert torch.equal(plain[0], cached[0]) and torch.equal(plain[1], cached[1])
    assert all(torch.equal(a, b) for a, b in zip(plain[2], cached[2], strict=True)) and plain[2]
    # every layer has its own fp32 weight back, the tied head included
    assert {name: p for name, p in model.named_parameters()} == weights
    assert all(p.dtype == torch.float32 for p in model.parameters())
    head = model.get_base_model().lm_head
    assert head.weight is model.get_base_model().model.embed_tokens.weight


def test_a_frozen_weight_changed_in_place_is_cast_again(tiny_model_dir):
    from ebft.models import frozen_weights_cast

    model = load_causal_lm(tiny_model_dir).requires_grad_(False)
    ids = torch.randint(0, 1000, (1, 16))
    with frozen_weights_cast(torch.bfloat16, model), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # as a LoRA merge would
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids).logits
    with frozen_weights_cast(torch.bfloat16, model), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert not torch.equal(before, after) and torch.equal(after, expected)
