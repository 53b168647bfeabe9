# Validation of the profile, the output layout, and the config each rule passes to the `ebft` CLI.
import json
import shlex
import sys
from pathlib import Path

from ebft.config import CodeEvalConfig, build, check_profile
from ebft.errors import ConfigError
from ebft.paths import Layout

try:
    check_profile(config)
except ConfigError as error:
    sys.exit(f"Config error: {error}")

# The `ebft` command of the environment running Snakemake, so `.venv/bin/snakemake` works without activating it.
_ebft = Path(sys.executable).parent / "ebft"
EBFT = shlex.quote(str(_ebft)) if _ebft.exists() else "ebft"
L = Layout(config.get("results_dir", "results"), config["profile"])
TASKS = list(config["tasks"])
METHODS = list(config.get("methods", ["sft"]))
EVAL_METHODS = ["base"] + METHODS
EVALS = ["ce", "fm"]  # validation cross-entropy, held-out feature-matching loss: every task
# RLVR needs a verifiable reward (unit tests, chrF); code evaluation (pass@k) needs problems with tests
RLVR_TASKS = [t for t in TASKS if config["tasks"][t].get("reward", "none") != "none"]
CODE_TASKS = [t for t in TASKS if config["tasks"][t].get("code_eval", "none") != "none"]
MODELS = sorted({config["tasks"][t]["model"] for t in TASKS})


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(EVAL_METHODS),
    model="|".join(MODELS),


def cfg_json(*sections, task=None, model=None, evaluation=None):
    """The profile's shared keys plus only the sections one rule needs, as JSON: a change elsewhere does not
    re-run the rule (Snakemake's params rerun trigger). ``evaluation`` keeps one subsection of ``eval``."""
    keep = {k: config[k] for k in ("profile", "results_dir", "offline", "seed", "precision") if k in config}
    keep.update({k: config[k] for k in sections if k in config})
    if task is not None:
        keep["tasks"] = {task: config["tasks"][task]}
        model = config["tasks"][task]["model"] if model is None else model
    if model is not None:
        keep["models"] = {model: config["models"][model]}
    if evaluation is not None:
        keep["eval"] = {evaluation: config.get("eval", {}).get(evaluation, {})}
    return json.dumps(keep, sort_keys=True)


def model_config(wildcards):
    """prepare_model needs the model's source, not how prompts are written for it."""
    entry = {k: v for k, v in config["models"][wildcards.model].items() if k != "prompt_format"}
    return json.dumps({**json.loads(cfg_json()), "models": {wildcards.model: entry}}, sort_keys=True)


def data_config(wildcards):
    return cfg_json(task=wildcards.task)


def sft_config(wildcards):
    return cfg_json("finetune", "sft", task=wildcards.task)


def ebft_config(wildcards):
    return cfg_json("finetune", "ebft", task=wildcards.task)


def rlvr_config(wildcards):
    return cfg_json("finetune", "ebft", "rlvr", task=wildcards.task)


def ce_config(wildcards):
    return cfg_json(task=wildcards.task, evaluation="ce")


def fm_config(wildcards):
    return cfg_json("ebft", task=wildcards.task, evaluation="fm")


def code_config(wildcards):
    return cfg_json(task=wildcards.task, evaluation="code")


def ebft_start(wildcards):
    """EBFT's starting policy: the base model, or the task's SFT checkpoint when ebft.init is 'sft'."""
    if config.get("ebft", {}).get("init", "base") == "sft":
        return L.checkpoint("sft", wildcards.task)
    return task_base_model(wildcards)


def task_base_model(wildcards):
    return L.model_dir(config["tasks"][wildcards.task]["model"])


def eval_model(wildcards):
    if wildcards.method == "base":
        return task_base_model(wildcards)
    return L.checkpoint(wildcards.method, wildcards.task)


def all_cores(wildcards):
    """Model jobs take every core Snakemake was given (--cores); they run one after another on a small machine."""
    return workflow.cores


def trained(task):
    """The methods trained on ``task``: RLVR only where the task has a verifiable reward."""
    return [m for m in METHODS if m != "rlvr" or task in RLVR_TASKS]


def eval_records():
    """Every evaluation record the report collects: CE and FM everywhere, pass@k on the code tasks."""
    records = []
    for task in TASKS:
        kinds = EVALS + (["code"] if task in CODE_TASKS else [])
        records += [L.eval_file(kind, task, m) for kind in kinds for m in ["base"] + trained(task)]
    return records


def figures():
    """The report's figures: one per metric the study produces."""
    metrics = ["val_ce", "fm_loss"]
    if CODE_TASKS:
        ks = build(CodeEvalConfig, config.get("eval", {}).get("code"), "eval.code").ks  # the typed defaults
        metrics += sorted({f"pass@{k}" for k in ks})
    return [L.figure(m) for m in metrics]


def study_products():
    """Every file the study produces. `all` asks for each of them, so deleting any one output rebuilds it and
    then only what depends on it (Snakemake otherwise skips a missing intermediate whose consumers are current)."""
    products = [L.model_dir(m) for m in MODELS]
    for task in TASKS:
        products += [L.data_dir(task) / name for name in ("train.jsonl", "heldout.jsonl", "manifest.json")]
        products += [L.checkpoint(m, task) for m in trained(task)]
        if task in CODE_TASKS:
            products += [L.samples_file(task, m) for m in ["base"] + trained(task)]
    return products + eval_records()
