"""Downstream translation: held-out pairs translated by the model, scored as MT papers report it (docs/method.md §6).

- Prompts: each held-out record's question (ALMA's ``Translate this from X to Y:\\nX: …\\nY:``) rendered as the task's
  prompt format renders it for training and RLVR (:func:`evals.code.render`); at most ``max_pairs`` pairs per
  direction, the first ones of the held-out file.
- Decoding: the released protocol, one sample at temperature 0.6 and top-p 0.95 (the first sample is scored), and,
  with ``greedy``, greedy decoding too. A hypothesis stops at its first newline.
- Cleaning, as the released code does: the first non-empty line of the output, without a repeated target-language
  label (``German: …``). The raw output is kept beside the cleaned one.
- Scores (sacreBLEU): corpus BLEU (tokenizer 13a, ``zh`` for Chinese targets) and chrF++ (``word_order=2``), per
  direction and macro-averaged over the en→xx directions, the xx→en directions and all of them. Each is stored with its
  sacreBLEU signature and a 95 % percentile-bootstrap interval over sentences (resampled within each direction, the
  corpus statistics re-summed, so an interval costs no re-tokenisation).
- COMET-22 where ``unbabel-comet`` and its model are available (a local folder, or the hub when online); otherwise a
  row with no value and the note "n/a (COMET model not available offline)", never a silent zero.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ebft.data import LANGUAGE_NAMES
from ebft.errors import UserError
from ebft.paths import atomic_write

SCORES = ("bleu", "chrf")
COMET_UNAVAILABLE = "n/a (COMET model not available offline)"


def direction(rec: dict) -> str:
    meta = rec.get("meta") or {}
    return f"{meta['src_lang']}-{meta['tgt_lang']}"


def select_pairs(records: list[dict], max_pairs: int | None, max_records: int | None = None) -> list[dict]:
    """The held-out pairs to translate: of the first ``max_records`` records (None: all), the first ``max_pairs`` of
    each direction, in file order."""
    kept, per = [], {}
    for rec in records[:max_records]:
        meta = rec.get("meta") or {}
        if not {"src_lang", "tgt_lang", "source", "reference"} <= meta.keys():
            raise UserError(f"held-out record {rec.get('id')!r} is not a translation pair (its meta lacks "
                            f"src_lang, tgt_lang, source or reference); rerun prepare-data for the task.")  # fmt: skip
        odd = next((k for k in ("src_lang", "tgt_lang", "source", "reference") if not isinstance(meta[k], str)), None)
        if odd is not None:
            raise UserError(f"held-out record {rec.get('id')!r} has a {odd} that is not text ({meta[odd]!r:.40}); "
                            f"fix that row of the task's data and rerun prepare-data.")  # fmt: skip
        d = direction(rec)
        if max_pairs is None or per.get(d, 0) < max_pairs:
            per[d] = per.get(d, 0) + 1
            kept.append(rec)
    if not kept:
        raise UserError("the held-out file holds no translation pairs; map the task's direction_field and rerun "
                        "prepare-data for it.")  # fmt: skip
    return kept


def clean(raw: str, tgt_lang: str) -> str:
    """A hypothesis from a model's output: its first non-empty line, without a repeated ``<Target>:`` label."""
    line = next((x.strip() for x in raw.splitlines() if x.strip()), "")
    label = f"{LANGUAGE_NAMES.get(tgt_lang, tgt_lang)}:"
    while line.startswith(label):
        line = line[len(label) :].strip()
    return line


def first_line_done(completion: str) -> bool:
    """Stop decoding once a non-empty line is complete (blank lines before it do not count)."""
    return any(line.strip() for line in completion.split("\n")[:-1])


def sacrebleu_metric(score: str, tgt_lang: str):
    from sacrebleu.metrics import BLEU, CHRF

    if score == "bleu":
        return BLEU(tokenize="zh" if tgt_lang.startswith("zh") else "13a")
    if score == "chrf":
        return CHRF(word_order=2)
    raise ValueError(f"unknown score {score!r}")


def groups_of(directions: Sequence[str]) -> dict[str, list[str]]:
    """Macro-average groups: every direction alone, en→xx, xx→en and all."""
    groups = {d: [d] for d in directions}
    out_of_en = [d for d in directions if d.startswith("en-")]
    into_en = [d for d in directions if d.endswith("-en")]
    if out_of_en:
        groups["en-xx"] = out_of_en
    if into_en:
        groups["xx-en"] = into_en
    groups["all"] = list(directions)
    return groups


def corpus_scores(score: str, by_direction: dict[str, tuple[list[str], list[str]]], *, resamples: int,
                  seed: int) -> dict[str, dict]:  # fmt: skip
    """Per direction and per macro group: the corpus score, a 95 % bootstrap interval and the sacreBLEU signature.

    ``by_direction`` maps a direction (``de-en``) to (hypotheses, references).
    """
    rng = np.random.default_rng(seed)
    stats, metrics = {}, {}
    for d, (hyps, refs) in by_direction.items():
        metrics[d] = sacrebleu_metric(score, d.split("-", 1)[1])
        stats[d] = np.asarray(metrics[d]._extract_corpus_statistics(hyps, [refs]), dtype=float)  # (sentences, k)

    def value(d, rows):
        return float(metrics[d]._compute_score_from_stats(rows.sum(axis=0).tolist()).score)

    full = {d: value(d, s) for d, s in stats.items()}
    boots = {d: np.empty(resamples) for d in stats}
    for r in range(resamples):
        for d, s in stats.items():
            boots[d][r] = value(d, s[rng.integers(0, len(s), len(s))])
    out = {}
    for group, members in groups_of(list(by_direction)).items():
        mean = float(np.mean([full[d] for d in members]))
        dist = np.mean([boots[d] for d in members], axis=0)
        low, high = np.percentile(dist, [2.5, 97.5])
        out[group] = {"value": mean, "ci_low": float(low), "ci_high": float(high),
                      "n": sum(len(stats[d]) for d in members), "directions": members,
                      "signature": metrics[members[0]].get_signature().format(),
                      "stats": {d: stats[d].tolist() for d in members}}  # fmt: skip
    return out


def macro_from_stats(score: str, stats: dict[str, np.ndarray]) -> float:
    """The macro-average over directions of the corpus score, from per-sentence sacreBLEU statistics."""
    return float(np.mean([sacrebleu_metric(score, d.split("-", 1)[1])._compute_score_from_stats(
        np.asarray(s).sum(axis=0).tolist()).score for d, s in stats.items()]))  # fmt: skip


def paired_macro_diff(score: str, a: dict[str, list], b: dict[str, list], *, resamples: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """A − B of a macro-averaged corpus score (BLEU, chrF++) on the same sentences, with a paired bootstrap: each
    resample draws one set of sentences per direction and scores both systems on it. Returns (difference, low, high)."""
    if a.keys() != b.keys() or any(len(a[d]) != len(b[d]) for d in a):
        raise ValueError("a paired comparison needs the same directions and sentences for both systems")
    sa = {d: np.asarray(v, dtype=float) for d, v in a.items()}
    sb = {d: np.asarray(v, dtype=float) for d, v in b.items()}
    metrics = {d: sacrebleu_metric(score, d.split("-", 1)[1]) for d in sa}

    def macro(stats, picks):
        return np.mean([metrics[d]._compute_score_from_stats(stats[d][picks[d]].sum(axis=0).tolist()).score
                        for d in stats])  # fmt: skip

    everything = {d: np.arange(len(s)) for d, s in sa.items()}
    diff = float(macro(sa, everything) - macro(sb, everything))
    rng = np.random.default_rng(seed)
    boots = np.empty(resamples)
    for r in range(resamples):
        picks = {d: rng.integers(0, len(s), len(s)) for d, s in sa.items()}
        boots[r] = macro(sa, picks) - macro(sb, picks)
    low, high = np.percentile(boots, [2.5, 97.5])
    return diff, float(low), float(high)


def comet_scores(model: str | None, sources, hyps, refs, *, batch_size: int) -> tuple[list[float] | None, str]:
    """Segment-level COMET scores, or (None, why not) when the package or its model is not at hand."""
    if model is None:
        return None, "n/a (COMET disabled: eval.translation.comet_model is null)"
    if importlib.util.find_spec("comet") is None:
        return None, COMET_UNAVAILABLE
    import os

    from comet import download_model, load_from_checkpoint

    local = Path(model).expanduser()
    try:
        if local.is_dir():
            ckpt = local / "checkpoints" / "model.ckpt"
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            return None, COMET_UNAVAILABLE
        else:
            ckpt = Path(download_model(model))
        scorer = load_from_checkpoint(str(ckpt))
    except Exception:  # noqa: BLE001  (no model on disk, no hub: the cell says so)
        return None, COMET_UNAVAILABLE
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
    result = scorer.predict(data, batch_size=batch_size, gpus=0, progress_bar=True)
    return [float(x) for x in result.scores], ""


def evaluate_translation(model_dir: Path, records: list[dict], prompt_format: str, cfg, *, precision: str, seed: int,
                         samples_out: Path, attention: str = "sdpa") -> tuple[list[dict], dict]:  # fmt: skip
    """Translate, clean, score; write one JSONL record per (pair, decoding). Returns (metric rows, extra record)."""
    import time

    import torch

    from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer
    from evals.code import render
    from evals.decode import decode

    pairs = select_pairs(records, cfg.max_pairs, cfg.max_records)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    dtype = autocast_dtype(precision, device) or torch.float32
    model = load_causal_lm(model_dir, dtype=dtype, attention=attention).to(device).eval()
    prompts = [render(p["question"], tokenizer, prompt_format) for p in pairs]
    decodings = {"sampled": False, **({"greedy": True} if cfg.greedy else {})}
    samples, rows, timings = [], [], {}
    for name, greedy in decodings.items():
        started = time.time()
        outputs = decode(model, tokenizer, prompts, n=1, greedy=greedy, temperature=cfg.temperature,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           done=first_line_done, seed=seed)  # fmt: skip
        timings[f"{name}_generation_s"] = round(time.time() - started, 2)
        by_direction: dict[str, tuple[list[str], list[str]]] = {}
        batch = []
        sentence_chrf = {}  # one sacreBLEU scorer per target language, not one per sentence
        for pair, (raw,) in zip(pairs, outputs, strict=True):
            meta = pair["meta"]
            hyp = clean(raw, meta["tgt_lang"])
            by_direction.setdefault(direction(pair), ([], []))
            by_direction[direction(pair)][0].append(hyp)
            by_direction[direction(pair)][1].append(meta["reference"])
            if meta["tgt_lang"] not in sentence_chrf:
                sentence_chrf[meta["tgt_lang"]] = sacrebleu_metric("chrf", meta["tgt_lang"])
            chrf = sentence_chrf[meta["tgt_lang"]]
            batch.append({"id": pair["id"], "decoding": name, "direction": direction(pair), "source": meta["source"],
                          "reference": meta["reference"], "raw": raw, "hypothesis": hyp,
                          "chrf": chrf.sentence_score(hyp, [meta["reference"]]).score})  # fmt: skip
        suffix = "" if name == "sampled" else "_greedy"
        for score in SCORES:
            for group, r in corpus_scores(score, by_direction, resamples=cfg.bootstrap, seed=seed).items():
                metric = f"{score}{suffix}" if group == "all" else f"{score}{suffix}[{group}]"
                rows.append({"metric": metric, "value": r["value"], "n": r["n"], "units": r["n"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "signature": r["signature"],
                             **({"unit_stats": r["stats"]} if group == "all" else {})})  # fmt: skip
        comet, why = comet_scores(cfg.comet_model, [b["source"] for b in batch], [b["hypothesis"] for b in batch],
                                  [b["reference"] for b in batch], batch_size=cfg.batch_size)  # fmt: skip
        if comet is None:
            rows.append({"metric": f"comet{suffix}", "value": float("nan"), "n": 0, "units": 0,
                         "ci_low": float("nan"), "ci_high": float("nan"), "note": why})  # fmt: skip
        else:
            from evals.stats import bootstrap_ratio_ci

            for b, c in zip(batch, comet, strict=True):
                b["comet"] = c
            low, high = bootstrap_ratio_ci(np.array(comet), np.ones(len(comet)), resamples=cfg.bootstrap, seed=seed)
            rows.append({"metric": f"comet{suffix}", "value": float(np.mean(comet)), "n": len(comet),
                         "units": len(comet), "ci_low": low, "ci_high": high,
                         "signature": cfg.comet_model})  # fmt: skip
        samples += batch
    atomic_write(samples_out, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    extra = {"pairs": len(pairs), "directions": sorted({direction(p) for p in pairs}), "samples_file": str(samples_out),
             **timings}  # fmt: skip
    return rows, extra
