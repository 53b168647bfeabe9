"""EBFT trainer: log-prob positions, block validity, a smoke run, exact resume after a kill, refused options."""

import csv
import json
import math

import pytest
import torch

from ebft import strided
from ebft.config import EBFTConfig, FinetuneConfig, HumanEvalSource, LoraSettings, build
from ebft.data import human_eval_split
from ebft.errors import ConfigError, UserError
from ebft.models import autocast_dtype
from ebft.packing import pack_examples
from ebft.strided import block_valid, generated_logprobs, strided_forward
from ebft.trainer import kl_penalty, reinforce_sum, train_ebft


@pytest.fixture(scope="module")
def records():
    return human_eval_split(HumanEvalSource(heldout=64), 43)[0][:10]


def test_log_prob_of_each_generated_token_comes_from_its_predictor(tiny_model_dir):
    from ebft.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir).eval()
    L, c, s, G = 19, 4, 4, 3
    NB = strided.num_blocks(L, c, s, G)
    g = torch.Generator().manual_seed(0)
    chunk = torch.randint(0, 49152, (1, L), generator=g)
    blocks = torch.randint(0, 49152, (1, NB, G), generator=g)
    seq = strided.strided_sequence(chunk, blocks)
    with torch.no_grad():
        logp = generated_logprobs(strided_forward(model, seq, L, c, s, G), seq, L, c, s, G, temperature=0.5)
        for k in range(NB):
            own = torch.cat([chunk[:, : c + k * s], blocks[:, k]], dim=1)  # the block as a plain sequence
            ref = torch.log_softmax(model(input_ids=own).logits[0] / 0.5, dim=-1)
            for t in range(G):
                expected = ref[c + k * s - 1 + t, blocks[0, k, t]]
                assert math.isclose(logp[0, k, t].item(), expected.item(), abs_tol=1e-4), (k, t)


def test_blocks_touching_padding_or_questions_are_not_valid():
    packed = pack_examples([([1, 2, 3, 4], [5, 6, 7, 8, 9, 10])], eos_id=0, pad_id=0, chunk_length=12)
    # stream of 10 tokens + 2 pads; c = s = G = 2 → blocks cover [2,4), [4,6), [6,8), [8,10), [10,12)
    assert block_valid(packed, 2, 2, 2, answer_only=False).tolist() == [[True, True, True, True, False]]
    assert block_valid(packed, 2, 2, 2, answer_only=True).tolist() == [[False, True, True, True, False]]


def test_document_masking_invalidates_blocks_that_leave_their_document():
    packed = pack_examples([([1, 2], [3, 4]), ([5, 6], [7, 8])], eos_id=0, pad_id=0, chunk_length=10)
    # stream 1 2 3 4 EOS 5 6 7 8 pad; documents 0 0 0 0 0 1 1 1 1 -1; c = s = 1, G = 2 → block k is anchored at
    # token k and predicts tokens k+1, k+2: blocks 3 and 4 (anchored in document 0) would predict document 1
    assert block_valid(packed, 1, 1, 2, answer_only=False, document_mask=True).tolist() == [
        [True, True, True, False, False, True, True, False]
    ]
    assert block_valid(packed, 1, 1, 2, answer_only=False).tolist() == [[True] * 7 + [False]]


def test_a_run_with_document_masking_trains_only_blocks_inside_one_document(tiny_model_dir, records, tmp_path):
    plain = run(tiny_model_dir, records, tmp_path / "plain", max_steps=1)
    masked = run(tiny_model_dir, records, tmp_path / "masked", document_mask=True, max_steps=1)
    assert masked["valid_block_fraction"] < plain["valid_block_fraction"]  # blocks crossing a document boundary drop
    rows = {name: next(csv.DictReader((tmp_path / name / "train_metrics.csv").open())) for name in ("plain", "masked")}
    assert int(rows["masked"]["valid_blocks"]) < int(rows["plain"]["valid_blocks"])
    assert math.isfinite(float(rows["masked"]["loss"]))


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    r = ref - logp
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), -r)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), r**2 / 2)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.exp(r) - 1 - r)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")


def run(tiny_model_dir, records, out, **kw):
    extra = {k: kw.pop(k) for k in ("halt_after", "settings_hash", "attention") if k in kw}
    finetune = kw.pop("finetune", FinetuneConfig())
    precision = kw.pop("precision", "fp32")
    settings = {"c": 8, "s": 8, "G": 8, "n": 3, "beta": 0.5, "lr": 1e-3, "batch_size": 2, "max_steps": 3,
                "checkpoint_every": 1, **kw}  # fmt: skip
    cfg = EBFTConfig(**settings)
    return train_ebft(base_dir=tiny_model_dir, start_dir=tiny_model_dir, train_records=records, chunk_length=64,
                      finetune=finetune, cfg=cfg, precision=precision, seed=7, out=out, **extra)  # fmt: skip


def trainable_weights(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter" / "adapter_model.safetensors")


def test_three_step_smoke_run_changes_weights_and_writes_every_output(tiny_model_dir, records, tmp_path):
    summary = run(tiny_model_dir, records, tmp_path)
    assert summary["steps"] == 3
    rows = list(csv.DictReader((tmp_path / "train_metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("reward", "ce", "policy_loss", "loss", "grad_norm"))
    assert (tmp_path / "checkpoint/state.pt").is_file() and (tmp_path / "train_summary.json").is_file()
    adapter = trainable_weights(tmp_path)
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    assert json.loads((tmp_path / "train_summary.json").read_text())["feature_network"].startswith("policy")


def test_a_killed_run_resumed_from_its_checkpoint_ends_with_identical_weights(tiny_model_dir, records, tmp_path):
    run(tiny_model_dir, records, tmp_path / "straight")
    halted = run(tiny_model_dir, records, tmp_path / "killed", halt_after=2)
    assert halted == {"steps": 2, "halted": True}
    assert not (tmp_path / "killed/adapter").exists()
    run(tiny_model_dir, records, tmp_path / "killed")  # restart: resumes at step 2
    a, b = trainable_weights(tmp_path / "straight"), trainable_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "killed/train_metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]


def test_refused_options(tiny_model_dir, records, tmp_path):
    with pytest.raises(ConfigError, match="β > 0 needs n ≥ 3"):
        build(EBFTConfig, {"beta": 0.5, "n": 2}, "ebft")
    with pytest.raises(ConfigError, match="'ebft.pooling' is 'max'"):
        build(EBFTConfig, {"pooling": "max"}, "ebft")
    with pytest.raises(ConfigError, match="'ebft.temperature'"):
        build(EBFTConfig, {"temperature": 0.0}, "ebft")
    with pytest.raises(ValueError, match="does not divide"):
        run(tiny_model_dir, records, tmp_path, s=5)


def test_sft_warm_start_keeps_the_base_model_as_feature_network(tiny_model_dir, records, tmp_path):
    import shutil

    start = tmp_path / "sft_checkpoint"
    shutil.copytree(tiny_model_dir, start)  # stands in for an SFT checkpoint
    cfg = EBFTConfig(n=3, batch_size=2, max_steps=1, init="sft")
    summary = train_ebft(base_dir=tiny_model_dir, start_dir=start, train_records=records, chunk_length=64,
                         finetune=FinetuneConfig(), cfg=cfg, precision="fp32", seed=0, out=tmp_path / "run")  # fmt: skip
    assert summary["feature_network"] == "frozen base copy"


def test_kl_to_the_starting_policy_is_zero_at_first_and_positive_after_an_update(tiny_model_dir, records, tmp_path):
    run(tiny_model_dir, records, tmp_path, kl_coef=0.1, kl_estimator="k3", max_steps=2, lr=1e-2, warmup_ratio=0.0)
    rows = list(csv.DictReader((tmp_path / "train_metrics.csv").open()))
    assert [float(r["lr"]) for r in rows] == [1e-2, 1e-2]
    kl = [float(r["kl"]) for r in rows]
    assert kl[0] == 0.0 and kl[1] > 0  # LoRA starts exactly at the reference


def test_tensorboard_is_refused_in_one_sentence_without_its_package(tiny_model_dir, records, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(UserError, match="tensorboard package"):
        run(tiny_model_dir, records, tmp_path, tensorboard=True, max_steps=1)


def test_tensorboard_gets_every_logged_scalar(tiny_model_dir, records, tmp_path, monkeypatch):
    import sys
    import types

    written = []

    class Writer:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, key, value, step):
            written.append((key, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run(tiny_model_dir, records, tmp_path, tensorboard=True, max_steps=2)
    assert {("reward", 1), ("reward", 2), ("ce", 2), ("lr", 1)} <= set(written)


def test_a_sequence_without_a_valid_block_does_not_dilute_the_policy_loss():
    """Regression: the mean over sequences counted sequences whose blocks were all invalid (padding)."""
    adv = torch.tensor([[1.0, -2.0], [1.0, 0.5], [3.0, 3.0]])  # (R = 3 sequences, NB = 2)
    logp = -torch.arange(12, dtype=torch.float32).view(3, 2, 2) / 10  # (R, NB, G = 2)
    keep = torch.ones(3, 2, 2)
    keep[1, 1] = 0  # sequence 1: only block 0 counts
    keep[2] = 0  # sequence 2: no valid block at all
    # by hand: sequence 0: −(1·(0 + −.1) + −2·(−.2 + −.3)) / 4 = −(−.1 + 1.0) / 4 = −.225
    #          sequence 1: −(1·(−.4 + −.5)) / 2 = .45; sequence 2 has nothing to train
    assert math.isclose(reinforce_sum(adv, logp, keep).item(), -0.225 + 0.45, abs_tol=1e-6)
    counted = int((keep.sum(dim=(1, 2)) > 0).sum())
    assert counted == 2  # the trainer divides by this: the loss is .1125, not the .075 of a mean over all 3


def test_a_batch_with_a_padding_only_chunk_trains_on_the_other_chunk(tiny_model_dir, tmp_path):
    """A chunk of padding has no valid block; the step still trains on the others and its loss stays finite."""
    short = [{"id": "a", "question": "", "answer": "x = 1\n" * 40, "tests": None, "entry_point": None, "meta": {}},
             {"id": "b", "question": "", "answer": "y", "tests": None, "entry_point": None, "meta": {}}]  # fmt: skip
    summary = run(tiny_model_dir, short, tmp_path, max_steps=1, batch_size=2, c=4, s=4, G=4)
    assert 0 < summary["valid_block_fraction"] < 1
    row = next(csv.DictReader((tmp_path / "train_metrics.csv").open()))
    assert math.isfinite(float(row["policy_loss"])) and float(row["grad_norm"]) > 0


def test_a_checkpoint_written_under_other_settings_is_never_continued(tiny_model_dir, records, tmp_path, capfd):
    """Regression: after a config edit the run resumed at the last step, trained nothing and kept the old weights."""
    out = tmp_path / "run"
    run(tiny_model_dir, records, out, max_steps=2, lr=1e-3, settings_hash="first")
    first = trainable_weights(out)
    run(tiny_model_dir, records, out, max_steps=2, lr=5e-3, settings_hash="second")
    assert "cannot be continued: it was written for other settings; starting afresh" in capfd.readouterr().err
    rows = list(csv.DictReader((out / "train_metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"]  # every step trained again, the old rows not kept
    assert float(rows[-1]["lr"]) == 5e-3
    second = trainable_weights(out)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert torch.load(out / "checkpoint/state.pt", weights_only=False)["identity"]["settings"] == "second"


def metric_rows(out):
    keep = ("step", "epoch", "reward", "ce", "loss", "grad_norm", "lr")  # not the timings
    return [{k: r[k] for k in keep} for r in csv.DictReader((out / "train_metrics.csv").open())]


def assert_same_update(a, b, keys, *, rel, abs, weights=True):
    """Runs ``a`` and ``b`` logged the same ``keys`` at every step and (LoRA) ended with the same adapter weights,
    within ``rel`` / ``abs``; returns both adapters' weights."""
    rows = [list(csv.DictReader((out / "train_metrics.csv").open())) for out in (a, b)]
    for first, second in zip(*rows, strict=True):
        for key in keys:
            assert float(second[key]) == pytest.approx(float(first[key]), rel=rel, abs=abs), key
    if not weights:
        return None
    wa, wb = trainable_weights(a), trainable_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rel, atol=abs)
    return wa, wb


def test_a_resumed_run_lists_every_step_once_though_its_csv_was_deleted(tiny_model_dir, records, tmp_path, capfd):
    """Regression: the workflow deletes a failed job's train_metrics.csv, and the resumed run wrote only the steps
    after its checkpoint; rows logged after the last checkpoint would also have been written twice."""
    settings = {"max_steps": 4, "checkpoint_every": 2}
    run(tiny_model_dir, records, tmp_path / "straight", **settings)
    run(tiny_model_dir, records, tmp_path / "killed", halt_after=3, **settings)  # checkpoint at 2, rows 1–3 logged
    assert [r["step"] for r in metric_rows(tmp_path / "killed")] == ["1", "2", "3"]
    (tmp_path / "killed/train_metrics.csv").unlink()  # what Snakemake does before it reruns the job
    capfd.readouterr()
    run(tiny_model_dir, records, tmp_path / "killed", **settings)
    assert "ebft: resuming from step 2 of 4" in capfd.readouterr().err
    assert metric_rows(tmp_path / "killed") == metric_rows(tmp_path / "straight")
    a, b = trainable_weights(tmp_path / "straight"), trainable_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_lora_rank_starts_afresh_instead_of_crashing(tiny_model_dir, records, tmp_path, capfd):
    """Regression: after a change of LoRA rank, resuming died with a tensor-size RuntimeError (here even with the
    same settings hash, as when a checkpoint of another code version is found)."""
    out = tmp_path / "run"
    rank = lambda r: FinetuneConfig(lora=LoraSettings(r=r, alpha=2 * r))  # noqa: E731
    run(tiny_model_dir, records, out, finetune=rank(2), halt_after=1, settings_hash="same")
    run(tiny_model_dir, records, out, finetune=rank(4), settings_hash="same")
    err = capfd.readouterr().err
    assert "cannot be continued: it was written for another starting model" in err and "starting afresh" in err
    assert [r["step"] for r in metric_rows(out)] == ["1", "2", "3"]
    assert next(v for k, v in trainable_weights(out).items() if "lora_A" in k).shape[0] == 4


def test_the_starting_weights_fingerprint_does_not_depend_on_the_thread_count():
    """Regression: the fingerprint summed each weight in float64, whose rounding depends on how many threads split the
    sum, so a run resumed with other threads per process (2 processes × 1 thread after 1 × 2) refused its own
    checkpoint as written for another starting model; it now sums the values' bit patterns as integers, exactly."""
    from ebft.trainer import weights_fingerprint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 3000), torch.nn.Linear(3000, 8).to(torch.bfloat16))
    threads = torch.get_num_threads()
    try:
        prints = set()
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            prints.add(weights_fingerprint(model))
    finally:
        torch.set_num_threads(threads)
    assert len(prints) == 1
    with torch.no_grad():
        model[0].weight[5, 7] = torch.nextafter(model[0].weight[5, 7], torch.tensor(1.0))  # one bit of one weight
    assert weights_fingerprint(model) not in prints


def test_micro_batches_accumulate_to_the_whole_rollout_batchs_update(tiny_model_dir, records, tmp_path):
    """Gradient accumulation (the released 16 × 4 batch in micro-batches of 8 sequences on one GPU): the same rollouts,
    the batch's 6 sequences forward and backward as 4 + 2, give the same losses, gradient norms and weights as all 6
    at once, within floating-point tolerance; every loss term is on (γ·CE, β·diversity, KL)."""
    kw = {"max_steps": 2, "gamma": 0.1, "kl_coef": 0.05}
    run(tiny_model_dir, records, tmp_path / "whole", **kw)
    run(tiny_model_dir, records, tmp_path / "micro", micro_batch_size=4, **kw)
    keys = ("reward", "ce", "policy_loss", "kl", "loss", "grad_norm")
    a, b = assert_same_update(tmp_path / "whole", tmp_path / "micro", keys, rel=1e-4, abs=1e-6)
    assert any(not torch.equal(a[k], b[k]) or a[k].abs().sum() > 0 for k in a)  # trained, not two untouched copies


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, records, tmp_path, mode):
    """finetune.gradient_checkpointing recomputes activations in the backward pass: the same rollouts (the cached
    sampler keeps its cache under no_grad), losses, gradient norms and weights as without, in fp32."""
    for on in (False, True):
        finetune = FinetuneConfig(mode=mode, lora=LoraSettings(r=4, alpha=8), gradient_checkpointing=on)
        run(tiny_model_dir, records, tmp_path / str(on), finetune=finetune, max_steps=2, gamma=0.1)
    keys = ("reward", "ce", "policy_loss", "loss", "grad_norm")
    assert_same_update(tmp_path / "False", tmp_path / "True", keys, rel=1e-5, abs=1e-7, weights=mode == "lora")


def test_eager_attention_trains_like_sdpa(tiny_model_dir, records, tmp_path):
    """The profile's ``attention: eager`` gives the same rollouts, losses, gradient norms and weights as sdpa (fp32)."""
    for attention in ("sdpa", "eager"):
        run(tiny_model_dir, records, tmp_path / attention, max_steps=2, gamma=0.1, attention=attention)
    keys = ("reward", "ce", "policy_loss", "loss", "grad_norm")
    assert_same_update(tmp_path / "sdpa", tmp_path / "eager", keys, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_shared_prefix_and_chunked_logits_train_like_the_whole_sequence_forwards(tiny_model_dir, records, tmp_path,
                                                                                      mode):  # fmt: skip
    """``ebft.shared_prefix`` (each chunk's prefix computed once for its n copies, in the policy's forward and the
    features') and ``ebft.logits_chunk`` (logits a few positions at a time) against the released whole-sequence
    forwards: the same rewards, losses, gradient norms and weights, every loss term on, with micro-batches that split
    a chunk's copies (fp32)."""
    finetune = FinetuneConfig(mode=mode, lora=LoraSettings(r=4, alpha=8))
    kw = {"max_steps": 2, "gamma": 0.1, "kl_coef": 0.05, "micro_batch_size": 4, "finetune": finetune}
    run(tiny_model_dir, records, tmp_path / "whole", shared_prefix=False, logits_chunk=0, **kw)
    run(tiny_model_dir, records, tmp_path / "shared", shared_prefix=True, logits_chunk=5, **kw)
    keys = ("reward", "alignment", "diversity", "ce", "policy_loss", "kl", "loss", "grad_norm")
    assert_same_update(tmp_path / "whole", tmp_path / "shared", keys, rel=1e-4, abs=1e-6, weights=mode == "lora")


@pytest.mark.skipif(autocast_dtype("auto", torch.device("cpu")) is None, reason="this CPU lacks bf16")
def test_bf16_training_on_cast_frozen_weights_is_bit_identical_to_autocasts_own_casts(
    tiny_model_dir, records, tmp_path, monkeypatch, fresh_accelerator_state
):
    import contextlib

    from safetensors.torch import load_file

    cast = run(tiny_model_dir, records, tmp_path / "cast", precision="bf16", max_steps=2)
    monkeypatch.setattr("ebft.trainer.frozen_weights_cast", lambda *a: contextlib.nullcontext())
    plain = run(tiny_model_dir, records, tmp_path / "plain", precision="bf16", max_steps=2)
    assert cast["mixed_precision"] == plain["mixed_precision"] == "bf16"
    rows = {name: list(csv.DictReader((tmp_path / name / "train_metrics.csv").open())) for name in ("cast", "plain")}
    for a, b in zip(rows["cast"], rows["plain"], strict=True):
        assert {k: v for k, v in a.items() if not k.endswith(("_s", "per_s"))} == {
            k: v for k, v in b.items() if not k.endswith(("_s", "per_s"))
        }
    for part in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        a, b = load_file(tmp_path / "cast" / part), load_file(tmp_path / "plain" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert all(t.dtype == torch.float32 for t in a.values())  # the merged model keeps its fp32 weights
