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
