"""The one reader of the configuration: typed sections, their bounds, the generated schema, and resolved jobs."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from ebft.config import LaunchConfig, SFTConfig, bound_problem, build
from ebft.errors import ConfigError
from ebft.resolve import job_from_json, load_study, read_study
from ebft.schema import SCHEMA_PATH, check_schema, profile_schema, schema_text

REPO = Path(__file__).resolve().parent.parent
PROFILES = ["cpu", "smoke", "paper"]


def profile(name):
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_resolves_and_meets_the_schema(name):
    check_schema(profile(name))
    study = load_study(profile(name))
    extra = {"qa_code_7b"} if name == "paper" else set()  # the paper's 7B scaling task
    assert set(study.tasks) == {"qa_code", "unstructured_code", "translation", *extra}


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda c: c["sft"].update(lrr=1.0), "unknown config key 'sft.lrr'; allowed keys there: batch_size"),
        (lambda c: c["finetune"].update(mode="qlora"), "config key 'finetune.mode' is 'qlora'; allowed values: 'lora', 'full'"),
        (lambda c: c.update(precision="fp16"), "config key 'precision' is 'fp16'; allowed values: 'auto', 'bf16', 'fp32'"),
        (lambda c: c.update(attention="flash"), "config key 'attention' is 'flash'; allowed values: 'sdpa', 'eager'"),
        (lambda c: c["tasks"]["qa_code"].update(model="gpt2"), "tasks.qa_code.model is 'gpt2', which is not defined"),
        (lambda c: c["tasks"]["qa_code"]["source"].update(heldot=3), "unknown config key 'tasks.qa_code.source.heldot'"),
        (lambda c: c["tasks"]["qa_code"]["source"].update(kind="mbpp"), "'tasks.qa_code.source.kind' is 'mbpp'; allowed values: human_eval, stdlib, django, hub"),
        (lambda c: c["tasks"]["translation"]["source"].update(heldout_fraction=1.5), "heldout_fraction' is 1.5; it must be < 1"),
        (lambda c: c["sft"].update(max_steps=0), "config key 'sft.max_steps' is 0; it must be ≥ 1."),
        (lambda c: c["eval"]["ce"].update(batch_size="8"), "config key 'eval.ce.batch_size' must be an integer, got '8'"),
        (lambda c: c["tasks"].update(math={"model": "smollm2", "source": {"kind": "stdlib"}}), "tasks.math is not a built-in task (qa_code, unstructured_code, translation), so it needs a kind; set tasks.math.kind to code, text or translation."),
        (lambda c: c["rlvr"].update(loss_type="ppo"), "config key 'rlvr.loss_type' is 'ppo'; allowed values: 'grpo'"),
        (lambda c: c["eval"]["code"].update(ks=[1, 8]), "config key 'eval.code.ks' is [1, 8]; every k must lie between 1 and n = 4"),
        (lambda c: c["eval"]["code"].update(greedy=True), "config key 'eval.code.n' is 4; greedy decoding gives one completion"),
        (lambda c: c["tasks"]["qa_code"].update(reward="bleu"), "config key 'tasks.qa_code.reward' is 'bleu'"),
        (lambda c: [t.update(reward="none") for t in c["tasks"].values()], "methods lists rlvr but no task sets a 'reward'"),
        (lambda c: c["tasks"]["translation"]["rlvr"].update(num_generations=1), "'tasks.translation.rlvr.num_generations' is 1; it must be ≥ 2"),
        (lambda c: c["tasks"]["translation"].update(ebft={"beta": 0.5, "n": 2}), "'tasks.translation.ebft.n' is 2; β > 0 needs n ≥ 3"),
        # the four disagreements between the old schema and the old dataclasses, now one declaration each
        (lambda c: c["tasks"]["qa_code"].update(chunk_length=1), "'tasks.qa_code.chunk_length' is 1; it must be ≥ 2"),
        (lambda c: c["eval"]["ce"].update(max_chunks=0), "'eval.ce.max_chunks' is 0; it must be ≥ 1"),
        (lambda c: c.update(seed=-1), "config key 'seed' is -1; it must be ≥ 0"),
        (lambda c: c["eval"]["code"].update(human_eval_heldout=200), "'eval.code.human_eval_heldout' is 200; it must be ≤ 163"),
        (lambda c: c["tasks"]["qa_code"].update(chunk_length=8), "tasks.qa_code: the strided layout does not fit its chunks"),
        (lambda c: c["tasks"]["translation"].update(ebft={"init": "sft"}) or c.update(methods=["ebft"]), "tasks.translation.ebft.init is 'sft' but methods does not list sft"),
        (lambda c: c["launch"].update(memory_mb={"train_ebtf": 9000}), "train_ebtf is not a rule that loads a model, or such a rule and a task ('rule/task'); the rules: prepare_model"),
        (lambda c: c["launch"].update(memory_mb={"train_ebft/math": 9000}), "train_ebft/math is not a rule that loads a model, or such"),
        (lambda c: c["launch"].update(memory_mb={"eval_ce": 0}), "'launch.memory_mb' is {'eval_ce': 0}; eval_ce: give a whole number of MB, at least 1"),
        (lambda c: c["launch"].update(threads=0), "config key 'launch.threads' is 0; it must be ≥ 1"),
    ],
)  # fmt: skip
def test_bad_profiles_fail_with_one_sentence_naming_the_key(mutate, expected):
    cfg = profile("cpu")
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        load_study(cfg)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.endswith(".")


def test_typed_sections_refuse_bad_values_directly_too():
    with pytest.raises(ConfigError, match=r"config key 'sft.betas' is \[0.9\]; give at least 2 item"):
        build(SFTConfig, {"betas": [0.9]}, "sft")
    with pytest.raises(ConfigError, match=r"'sft.betas' is \[0.9, 1.0\]; item 1 \(1.0\): it must be < 1"):
        build(SFTConfig, {"betas": [0.9, 1.0]}, "sft")
    with pytest.raises(ConfigError, match="must be a number"):
        build(SFTConfig, {"lr": "fast"}, "sft")
    assert build(SFTConfig, {"lr": "1e-4"}, "sft").lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(Exception, match="it must be ≥ 1"):
        SFTConfig(max_steps=0)  # constructing a section in code checks the same bounds


def test_a_jobs_memory_is_its_tasks_else_its_rules_else_the_largest_of_its_tasks():
    launch = build(LaunchConfig, {"memory_mb": {"train_ebft": 7000, "train_ebft/translation": 12000,
                                                "train_rlvr/qa_code": 11500, "train_rlvr/translation": 3500}}, "launch")  # fmt: skip
    assert launch.memory("train_ebft", "translation") == 12000
    assert launch.memory("train_ebft", "qa_code") == 7000
    assert launch.memory("train_rlvr", "translation") == 3500
    assert launch.memory("train_rlvr", "unstructured_code") == 11500  # no rule value: the largest of its tasks'
    assert launch.memory("eval_ce", "qa_code") is None  # not sized: Snakemake's default


def test_a_task_launches_its_training_jobs_its_own_way_over_the_profiles_launch():
    """tasks.<task>.launch lays the task's processes and strategy over the global launch (the paper's 7B task: 8 FSDP
    processes); the other tasks keep the global one, and the task's processes must split its own batches."""
    raw = profile("smoke")
    raw["launch"] = {"processes": 2, "threads": 1}
    raw["tasks"]["qa_code"]["launch"] = {"processes": 4, "strategy": "fsdp", "cpu_offload": True}
    raw["tasks"]["qa_code"]["ebft"] = {"batch_size": 4}
    raw["tasks"]["qa_code"]["sft"] = {"batch_size": 8}
    study = load_study(raw)
    mine, other = study.tasks["qa_code"].launch, study.tasks["translation"].launch
    assert (mine.processes, mine.strategy, mine.cpu_offload, mine.threads) == (4, "fsdp", True, 1)
    assert (other.processes, other.strategy, other.cpu_offload) == (2, "ddp", False)
    plain = load_study(profile("smoke"))  # how jobs are launched is none of their settings
    assert (
        study.job("train", task="translation", method="ebft").hash
        == plain.job("train", task="translation", method="ebft").hash
    )
    bad = copy.deepcopy(raw)
    bad["tasks"]["qa_code"]["ebft"] = {"batch_size": 2}
    with pytest.raises(ConfigError, match=r"tasks.qa_code: ebft.batch_size is 2, which tasks.qa_code.launch.processes "
                                          r"\(4\) cannot split evenly"):  # fmt: skip
        load_study(bad)
    bad = copy.deepcopy(raw)
    bad["tasks"]["qa_code"]["launch"] = {"strategy": "zero3"}
    with pytest.raises(ConfigError, match=r"'tasks.qa_code.launch.strategy' is 'zero3'"):
        load_study(bad)
    bad["tasks"]["qa_code"]["launch"] = {"memory_mb": {"train_ebft": 9000}}
    with pytest.raises(ConfigError, match=r"tasks.qa_code.launch sets memory_mb, which is set once for the profile"):
        load_study(bad)


def test_missing_profile_file_is_one_sentence():
    with pytest.raises(ConfigError, match="does not exist; pass a profile"):
        read_study("config/nope.yaml")


# --------------------------------------------------------------------------------------------------
# The schema is generated from the dataclasses, and both read the bounds the same way
# --------------------------------------------------------------------------------------------------


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA_PATH.read_text() == schema_text(), "run `ebft schema > workflow/schemas/config.schema.yaml`"


def bounded_fields():
    """(section, field, subschema) for every field of every section that declares bounds."""
    schema = profile_schema()
    for section, spec in schema["$defs"].items():
        for name, sub in spec["properties"].items():
            keys = set(sub) | set(sub.get("items", {}))
            if keys & {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minItems", "maxItems"}:
                yield section, name, sub


def probes(sub):
    """Values on both sides of every numeric bound of a field (or of its items, or of its length)."""
    integer = "integer" in (sub.get("type") if isinstance(sub.get("type"), list) else [sub.get("type")])
    step = 1 if integer else 1e-3
    out = []
    for key, sign in (("minimum", 0), ("exclusiveMinimum", 1), ("maximum", 0), ("exclusiveMaximum", -1)):
        if key in sub:
            b = sub[key]
            out += [b + sign * step, b - step, b + step]
    arrays = [form for form in sub.get("anyOf", []) if form.get("type") == "array"]  # a list among other forms
    items = sub.get("items") or (arrays[0].get("items", {}) if arrays else {})
    item_int = items.get("type") == "integer"
    for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if key in items:
            b = items[key]
            for v in (b - (1 if item_int else 1e-3), b, b + (1 if item_int else 1e-3)):
                out.append([v] * max(sub.get("minItems", 1), 1))
    if "minItems" in sub or "maxItems" in sub:
        ok_item = {"number": 0.5, "integer": 1, "string": "x"}.get(items.get("type"), 0.5)
        for n in {
            sub.get("minItems", 1) - 1,
            sub.get("minItems", 1),
            sub.get("maxItems", 3),
            sub.get("maxItems", 3) + 1,
        }:
            if n >= 0:
                out.append([ok_item] * n)
    return out


@pytest.mark.parametrize("section,name,sub", list(bounded_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_schema_and_the_typed_sections_agree_on_every_bound(section, name, sub):
    import dataclasses

    from ebft import config

    cls = getattr(config, section)
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    bounds, items = field.metadata["bounds"], field.metadata["items"]
    values = probes(sub)
    assert values, f"{section}.{name} declares bounds but no probe was made"
    for value in values:
        schema_ok = jsonschema.Draft202012Validator(sub).is_valid(value)
        typed_ok = bound_problem(value, bounds, items) is None
        assert schema_ok == typed_ok, f"{section}.{name} = {value!r}: schema {schema_ok}, typed {typed_ok}"


def test_source_is_a_typed_union_chosen_by_kind():
    from ebft.config import DjangoSource, HubSource, HumanEvalSource

    study = load_study(profile("cpu"))
    assert isinstance(study.task("qa_code").source, HumanEvalSource)
    assert isinstance(study.task("translation").source, DjangoSource)
    assert isinstance(load_study(profile("paper")).task("qa_code").source, HubSource)
    bad = profile("paper")
    del bad["tasks"]["qa_code"]["source"]["train"]
    with pytest.raises(ConfigError, match="'tasks.qa_code.source.train' is missing; it is required"):
        load_study(bad)
    both = profile("paper")
    both["tasks"]["qa_code"]["source"]["heldout_fraction"] = 0.2
    with pytest.raises(ConfigError, match="give heldout .* or heldout_fraction .*, not both"):
        load_study(both)


# --------------------------------------------------------------------------------------------------
# Resolved jobs
# --------------------------------------------------------------------------------------------------


def test_task_overrides_are_merged_once_onto_the_global_sections():
    study = load_study(profile("paper"))
    sft = study.task("translation").sft
    assert sft.lr == 3e-6 and sft.scheduler == "cosine" and sft.batch_size == 16
    ebft = study.task("translation").ebft
    assert (ebft.c, ebft.s, ebft.G, ebft.pooling, ebft.lr) == (4, 2, 4, "mean", 1e-6)
    assert study.job("train", task="translation", method="ebft").ebft_config() == ebft


def test_a_job_from_the_workflows_json_is_the_job_from_the_profile():
    study = read_study("config/cpu.yaml")
    for args in [("train", {"task": "qa_code", "method": "rlvr"}), ("eval", {"task": "translation", "method": "ebft",
                 "kind": "fm"}), ("prepare-model", {"model": "smollm2"}), ("report", {})]:  # fmt: skip
        job = study.job(args[0], **args[1])
        again = job_from_json(job.to_json())
        assert again == job and again.hash == job.hash


def test_a_job_hash_follows_exactly_the_settings_that_define_it():
    raw = profile("cpu")
    base = load_study(raw)
    changed = copy.deepcopy(raw)
    changed["ebft"]["lr"] = 5e-4
    other = load_study(changed)
    for task in ("qa_code", "translation"):
        assert other.job("train", task=task, method="ebft").hash != base.job("train", task=task, method="ebft").hash
        # RLVR shares EBFT's optimiser: it reruns; SFT and the base model's evaluations do not
        assert other.job("train", task=task, method="rlvr").hash != base.job("train", task=task, method="rlvr").hash
        assert other.job("train", task=task, method="sft").hash == base.job("train", task=task, method="sft").hash
        for kind in ("ce", "fm"):
            assert other.job("eval", task=task, method="base", kind=kind).hash == base.job(
                "eval", task=task, method="base", kind=kind).hash  # fmt: skip
            assert other.job("eval", task=task, method="ebft", kind=kind).hash != base.job(
                "eval", task=task, method="ebft", kind=kind).hash  # fmt: skip
    renamed = copy.deepcopy(raw)
    renamed["results_dir"] = "elsewhere"
    assert load_study(renamed).job("train", task="qa_code", method="ebft").hash == base.job(
        "train", task="qa_code", method="ebft").hash  # fmt: skip


def test_a_per_task_sft_init_starts_from_that_tasks_sft_job():
    raw = profile("cpu")
    raw["tasks"]["translation"]["ebft"]["init"] = "sft"
    study = load_study(raw)
    sft_hash = study.job("train", task="translation", method="sft").hash
    assert study.job("train", task="translation", method="ebft").start == f"sft:{sft_hash}"
    assert study.job("train", task="translation", method="rlvr").start == f"sft:{sft_hash}"
    assert study.job("train", task="qa_code", method="ebft").start == "base"


def test_the_base_model_is_evaluated_once_per_problem_set():
    """qa_code's held-out split and unstructured_code's HumanEval problems are the same 64 problems: the second task's
    base pass@k copies the first's record. Trained methods, and a task with other problems, compute their own."""
    raw = profile("cpu")
    study = load_study(raw)
    owner = study.job("eval", task="qa_code", method="base", kind="code")
    assert owner.same_as is None
    assert (
        study.job("eval", task="unstructured_code", method="base", kind="code").same_as == f"qa_code/base:{owner.hash}"
    )
    assert study.job("eval", task="unstructured_code", method="sft", kind="code").same_as is None
    assert study.job("eval", task="unstructured_code", method="base", kind="ce").same_as is None
    for change in ({"human_eval_heldout": None}, {"human_eval_heldout": 32}):  # all 164, or another split
        other = copy.deepcopy(raw)
        other["eval"]["code"].update(change)
        assert load_study(other).job("eval", task="unstructured_code", method="base", kind="code").same_as is None
    other = copy.deepcopy(raw)  # the same problems sampled otherwise for one task: never the other task's record
    other["tasks"]["unstructured_code"]["eval"] = {"code": {"temperature": 0.2}}
    assert load_study(other).job("eval", task="unstructured_code", method="base", kind="code").same_as is None
    other = copy.deepcopy(raw)
    other["seed"] = 7  # both splits follow the seed: still one problem set
    assert load_study(other).base_code_owner("unstructured_code") == "qa_code"


# --------------------------------------------------------------------------------------------------
# The command line and the workflow
# --------------------------------------------------------------------------------------------------


def test_cli_reports_a_bad_config_without_traceback(tmp_path, cli_env):
    cfg = profile("smoke")
    cfg["sft"]["warmup"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "prepare-data", "--config", str(path), "--task",
                           "qa_code"], capture_output=True, text=True, env=cli_env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ebft: error: unknown config key 'sft.warmup'; allowed keys there: batch_size, betas, downstream_every, epochs, "
        "eval_every, grad_accum, grad_clip, log_every, loss_on, lr, max_steps, scheduler, warmup_ratio, weight_decay."
    ]


def test_snakemake_reports_a_bad_config_without_traceback(tmp_path, cli_env):
    cfg = profile("smoke")
    cfg["finetune"]["mode"] = "qlora"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)],
                          capture_output=True, text=True, env=cli_env, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key 'finetune.mode' is 'qlora'; allowed values: 'lora', 'full'." in out
    assert "Traceback" not in out


def test_no_module_reads_the_raw_profile_but_the_resolver():
    """The workflow and the commands hold a Study or a Job; only ebft.resolve and ebft.config read raw YAML."""
    readers = []
    for path in [*REPO.glob("ebft/*.py"), *REPO.glob("baselines/*.py"), *REPO.glob("evals/*.py"),
                 *REPO.glob("workflow/rules/*.smk"), REPO / "Snakefile"]:  # fmt: skip
        text = path.read_text()
        if path.name in ("resolve.py", "config.py"):
            continue
        if 'config["' in text or "config.get(" in text or "raw.get(" in text or "read_profile_file" in text:
            readers.append(path.name)
    assert readers == []


# --------------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------------


def test_the_paper_sweeps_are_27_ebft_runs_per_task_one_of_them_the_ebft_run():
    study = load_study(profile("paper"))
    assert study.points("qa_code_7b") == []  # the 7B scaling task trains SFT and EBFT only
    for task in ("qa_code", "unstructured_code", "translation"):
        points = study.points(task)
        assert len(points) == 27 and len({p.id for p in points}) == 27
        same = [p for p in points if p.same_as]
        assert [p.id for p in same] == ["set1/whitening-released_gamma-0.03_beta-0.0"]
        assert study.job("train", task=task, method=same[0].id) == study.job("train", task=task, method="ebft")
    point = study.point("qa_code", "set2/whitening-released_gamma-0.1_beta-1.0")
    job = study.job("train", task="qa_code", method=point.id)
    assert job.run == point.id and job.method == "ebft" and job.start.startswith("sft:")
    assert (job.ebft["gamma"], job.ebft["beta"], job.ebft["epochs"], job.ebft["whitening"]) == (0.1, 1.0, 1, "released")
    evaluation = study.job("eval", task="qa_code", method=point.id, kind="ce")
    assert evaluation.trained == job.hash and evaluation.sweep == {"name": "set2", "whitening": "released",
                                                                   "gamma": 0.1, "beta": 1.0}  # fmt: skip
    copied = study.job("eval", task="qa_code", method=same[0].id, kind="fm")
    assert copied.same_as == f"qa_code/ebft:{study.job('eval', task='qa_code', method='ebft', kind='fm').hash}"


def test_a_sweep_can_start_from_a_declared_model_such_as_a_released_sft_checkpoint():
    raw = profile("cpu")
    raw["models"]["sft_released"] = {"source": "some/released-sft"}
    raw["sweeps"] = {
        "warm": {"tasks": ["qa_code"], "grid": {"gamma": [0.0]}, "warm_start": {"qa_code": "sft_released"}}
    }
    study = load_study(raw)
    assert "sft_released" in study.models  # prepared like the tasks' models
    assert study.job("train", task="qa_code", method="warm/gamma-0.0").start == "model:sft_released"
    assert study.points("translation") == []


@pytest.mark.parametrize(
    "sweep,expected",
    [
        ({"grid": {"gama": [0.1]}}, "unknown config key 'sweeps.s.gama'"),
        ({"grid": {}}, "config key 'sweeps.s.grid' is {}; it must map at least one EBFT setting"),
        ({"grid": {"gamma": [0.1]}, "tasks": ["qa"]}, "sweeps.s.tasks lists 'qa', which is not a task"),
        ({"grid": {"gamma": [0.1]}, "warm_start": {"qa_code": "nope"}}, "sweeps.s.warm_start.qa_code is 'nope'"),
        ({"grid": {"c": [7]}}, "sweeps.s: the run s/c-7 does not fit"),
        ({"grid": {"whitening": ["bad"]}}, "config key 'sweeps.s.whitening' is 'bad'"),
        ({"grid": {"feature_layers": [["a/b"]]}}, "config key 'sweeps.s.feature_layers[0]' must be a number"),
    ],
)
def test_a_bad_sweep_is_one_sentence(sweep, expected):
    raw = profile("cpu")
    raw["sweeps"] = {"s": sweep}
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_study(raw)


def test_a_sweep_from_sft_needs_the_sft_method():
    raw = profile("cpu")
    raw["methods"] = ["ebft"]
    raw["sweeps"] = {"s": {"grid": {"gamma": [0.1]}, "ebft": {"init": "sft"}}}
    with pytest.raises(ConfigError, match="sweeps.s starts from SFT .* but methods does not list sft"):
        load_study(raw)
