"""Downstream translation: cleaning, pair selection, sacreBLEU scores with intervals (equal to the sacrebleu command
line), COMET's 'n/a' cell offline and its plumbing, and an evaluation of the smoke model end to end."""

from __future__ import annotations

import importlib.machinery
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ebft.config import DjangoSource, TranslationEvalConfig
from ebft.data import django_split
from ebft.errors import UserError
from evals.translation import (
    COMET_UNAVAILABLE,
    clean,
    comet_scores,
    corpus_scores,
    evaluate_translation,
    first_line_done,
    select_pairs,
)

HYPS = {
    "en-de": ["Die Katze sitzt auf der Matte.", "Hallo Welt", "Das ist ein Test.", "Guten Morgen"],
    "de-en": ["The cat sits on the mat.", "Hello world", "This is a test", "Good morning to you"],
}
REFS = {
    "en-de": ["Die Katze saß auf der Matte.", "Hallo, Welt!", "Dies ist ein Test.", "Guten Morgen."],
    "de-en": ["The cat sat on the mat.", "Hello, world!", "This is a test.", "Good morning."],
}


def test_decoding_stops_after_the_first_non_empty_line():
    assert not first_line_done(" Guten") and not first_line_done(" \n") and not first_line_done("\n \nGuten")
    assert first_line_done(" Guten Tag\n") and first_line_done("\n Guten Tag\nEnglish")


def test_cleaning_keeps_the_first_line_without_a_repeated_label():
    assert clean("\n German: Guten Tag\nEnglish: Good day", "de") == "Guten Tag"
    assert clean("Guten Tag", "de") == "Guten Tag"
    assert clean("", "de") == ""
    assert clean("English: Good day", "de") == "English: Good day"  # only the target's own label goes


def pair(i, src, tgt):
    return {"id": f"{src}-{tgt}:{i}", "question": "q", "answer": " a",
            "meta": {"src_lang": src, "tgt_lang": tgt, "source": f"s{i}", "reference": f"r{i}"}}  # fmt: skip


def test_pairs_are_the_first_of_each_direction_and_other_records_are_refused():
    records = [pair(i, *d) for i in range(5) for d in (("en", "de"), ("de", "en"))]
    kept = select_pairs(records, 2)
    assert [r["id"] for r in kept] == ["en-de:0", "de-en:0", "en-de:1", "de-en:1"]
    assert len(select_pairs(records, None)) == 10
    with pytest.raises(UserError, match="is not a translation pair"):
        select_pairs([{"id": "x", "question": "q", "answer": "a", "meta": {}}], 2)


def sacrebleu_cli(tmp_path, hyps, refs, *args) -> float:
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "sacrebleu"),
            str(tmp_path / "ref.txt"),
            "-i",
            str(tmp_path / "hyp.txt"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("score,args", [("bleu", ["-m", "bleu"]), ("chrf", ["-m", "chrf", "--chrf-word-order", "2"])])
def test_scores_equal_the_sacrebleu_command_line_signature_included(tmp_path, score, args):
    scores = corpus_scores(score, {d: (HYPS[d], REFS[d]) for d in HYPS}, resamples=200, seed=0)
    for d in HYPS:
        cli = sacrebleu_cli(tmp_path, HYPS[d], REFS[d], *args)
        assert scores[d]["value"] == pytest.approx(cli["score"], abs=0.05)  # the CLI prints one decimal
        assert scores[d]["signature"] == cli["signature"]
        assert scores[d]["ci_low"] <= scores[d]["value"] <= scores[d]["ci_high"]
    assert scores["all"]["value"] == pytest.approx((scores["en-de"]["value"] + scores["de-en"]["value"]) / 2)
    assert scores["en-xx"]["directions"] == ["en-de"] and scores["xx-en"]["directions"] == ["de-en"]
    assert scores["all"]["n"] == 8


def test_comet_without_its_model_offline_is_a_note_never_a_zero(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores, why = comet_scores("Unbabel/wmt22-comet-da", ["s"], ["h"], ["r"], batch_size=2)
    assert scores is None and why == COMET_UNAVAILABLE
    assert comet_scores(None, ["s"], ["h"], ["r"], batch_size=2)[1].startswith("n/a (COMET disabled")


def test_comet_scores_come_from_a_local_model_when_there_is_one(monkeypatch, tmp_path):
    """The plumbing around unbabel-comet (not installed here): a stand-in module with its two entry points."""
    seen = {}

    class Scorer:
        def predict(self, data, batch_size, gpus, progress_bar):
            seen.update(data=data, batch_size=batch_size, gpus=gpus)
            return types.SimpleNamespace(scores=[0.5 + i / 10 for i in range(len(data))])

    fake = types.ModuleType("comet")
    fake.__spec__ = importlib.machinery.ModuleSpec("comet", None)
    fake.download_model = lambda name: pytest.fail("a local model must not be downloaded")
    fake.load_from_checkpoint = lambda path: seen.update(path=path) or Scorer()
    monkeypatch.setitem(sys.modules, "comet", fake)
    (tmp_path / "checkpoints").mkdir()
    scores, why = comet_scores(str(tmp_path), ["s1", "s2"], ["h1", "h2"], ["r1", "r2"], batch_size=3)
    assert scores == [0.5, 0.6] and why == ""
    assert seen["path"] == str(tmp_path / "checkpoints/model.ckpt") and seen["gpus"] == 0
    assert seen["data"][1] == {"src": "s2", "mt": "h2", "ref": "r2"}


def test_the_smoke_model_is_scored_end_to_end(tiny_model_dir, tmp_path):
    _, heldout, _ = django_split(DjangoSource(languages=["de"], heldout_fraction=0.1), 43)
    cfg = TranslationEvalConfig(max_pairs=3, max_new_tokens=8, batch_size=3, bootstrap=50)
    rows, extra = evaluate_translation(tiny_model_dir, heldout, "chat", cfg, precision="fp32", seed=1,
                                       samples_out=tmp_path / "samples.jsonl")  # fmt: skip
    by_name = {r["metric"]: r for r in rows}
    for name in ("bleu", "chrf", "bleu_greedy", "chrf_greedy", "chrf[en-de]", "chrf[xx-en]", "bleu_greedy[de-en]"):
        assert name in by_name and math.isfinite(by_name[name]["value"]), name
        assert by_name[name]["signature"].startswith("nrefs:1|")
    assert by_name["bleu"]["n"] == 6 and extra["directions"] == ["de-en", "en-de"]
    assert math.isnan(by_name["comet"]["value"]) and by_name["comet"]["note"].startswith("n/a")
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and {s["decoding"] for s in samples} == {"sampled", "greedy"}
    assert all(s["hypothesis"] == clean(s["raw"], s["direction"].split("-")[1]) for s in samples)
    again, _ = evaluate_translation(tiny_model_dir, heldout, "chat", cfg, precision="fp32", seed=1,
                                    samples_out=tmp_path / "again.jsonl")  # fmt: skip
    assert json.dumps(again) == json.dumps(rows)  # deterministic, sampled decoding included


def test_paired_corpus_differences_resample_the_same_sentences_for_both_systems():
    from evals.translation import macro_from_stats, paired_macro_diff

    refs = {d: REFS[d] * 5 for d in REFS}
    good = {d: (HYPS[d] * 5, refs[d]) for d in HYPS}
    worse = {d: ([h.split(" ")[0] for h in HYPS[d]] * 5, refs[d]) for d in HYPS}  # first word only
    a = corpus_scores("chrf", good, resamples=10, seed=0)["all"]["stats"]
    b = corpus_scores("chrf", worse, resamples=10, seed=0)["all"]["stats"]
    diff, low, high = paired_macro_diff("chrf", a, b, resamples=300, seed=1)
    assert diff == pytest.approx(macro_from_stats("chrf", a) - macro_from_stats("chrf", b))
    assert diff == pytest.approx(corpus_scores("chrf", good, resamples=10, seed=0)["all"]["value"]
                                 - corpus_scores("chrf", worse, resamples=10, seed=0)["all"]["value"])  # fmt: skip
    assert 0 < low <= diff <= high
    same = corpus_scores("bleu", good, resamples=10, seed=0)["all"]["stats"]
    assert paired_macro_diff("bleu", same, same, resamples=50, seed=1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same directions and sentences"):
        paired_macro_diff("chrf", a, {"en-de": a["en-de"]}, resamples=5)
