"""The paper profile against local stand-ins of its real hub datasets (tests/hub_fixtures.py): data preparation, the
code evaluation in both unit-test forms, RLVR's reward and the translation evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hub_fixtures import CLAMP, SUM_EVEN, paper_profile_on_fixtures, write_datasets

from ebft.cli import main
from ebft.config import CodeEvalConfig, HubSplit, RLVRConfig
from ebft.data import alma_pair, parse_tests, read_records, write_task_data
from ebft.errors import UserError
from ebft.resolve import load_study
from evals.code import extract_program, load_problems, response_code, score, unit_test_programs
from evals.sandbox import Tests


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The paper profile on the fixtures, every task's data prepared through the CLI."""
    root = tmp_path_factory.mktemp("paper")
    raw = paper_profile_on_fixtures(root)
    path = root / "paper.yaml"
    path.write_text(yaml.safe_dump(raw))
    for task in ("qa_code", "unstructured_code", "translation"):
        assert main(["prepare-data", "--config", str(path), "--task", task]) == 0
    study = load_study(raw)
    return path, study


def records(study, task, side="heldout"):
    return read_records(study.layout.data_dir(task) / f"{side}.jsonl")


def test_the_real_columns_become_records_with_their_tests_and_directions(paper):
    _, study = paper
    qa = records(study, "qa_code")
    assert [r["question"] for r in qa][:2] == [SUM_EVEN["question"], CLAMP["question"]]  # the split's own order
    assert qa[0]["tests"] == ["assert sum_even([1, 2, 3, 4]) == 6", "assert sum_even([]) == 0",
                              "assert sum_even([1, 3]) == 0"]  # fmt: skip
    assert qa[0]["entry_point"] is None and qa[0]["meta"] == {"source": "algorithmic"}
    assert len(records(study, "qa_code", "train")) == 2
    assert records(study, "unstructured_code")[2]["question"] == "# utilities\n"
    wmt = records(study, "translation")
    assert [(r["meta"]["src_lang"], r["meta"]["tgt_lang"]) for r in wmt][:4] == [("de", "en"), ("en", "de"),
                                                                                ("zh", "en"), ("en", "zh")]  # fmt: skip
    assert wmt[2]["meta"]["source"] == "我喜欢读书。" and wmt[2]["meta"]["reference"] == "I like reading."
    assert records(study, "translation", "train")[2]["meta"]["src_lang"] == "cs"


def test_gold_answers_pass_every_assert_and_wrong_ones_do_not(paper):
    """OpenCode's asserts: gold responses score pass@1 = 1 (the response's own print and assert lines are cut off, no
    prose is prepended); empty responses 0; a response that passes some asserts fails pass@k."""
    _, study = paper
    problems = load_problems("heldout", study.layout.data_dir("qa_code") / "heldout.jsonl", CodeEvalConfig(), 43)
    assert len(problems) == 3
    cfg = CodeEvalConfig(n=2, ks=[1, 2], bootstrap=10)
    gold = [[p["answer"]] * 2 for p in problems]
    samples, rows = score(problems, gold, "raw", cfg, seed=0)
    assert rows[0]["value"] == 1.0, [s["detail"] for s in samples if s["status"] != "passed"]
    assert samples[2]["program"].rstrip().endswith("return max(low, min(x, high))")  # cut before print(
    _, rows = score(problems, [[""] * 2 for _ in problems], "raw", cfg, seed=0)
    assert rows[0]["value"] == 0.0
    wrong = "```python\ndef sum_even(nums):\n    return 0\n```"  # passes 2 of 3 asserts
    _, rows = score(problems[:1], [[wrong, wrong]], "raw", cfg, seed=0)
    assert rows[0]["value"] == 0.0


def test_rlvr_rewards_the_fraction_of_asserts_passed(paper):
    from baselines.rlvr import prompt_rows, unit_test_reward

    _, study = paper
    train = records(study, "qa_code", "train")
    rows = prompt_rows(train, None, "raw", "unit_tests")
    assert rows[0]["prompt"] == SUM_EVEN["question"] and rows[0]["entry_point"] is None
    reward = unit_test_reward("raw", RLVRConfig())
    wrong = "```python\ndef sum_even(nums):\n    return 0\n```"
    row = rows[0]
    got = reward([row["prompt"]] * 3, [SUM_EVEN["answer"], wrong, ""], question=[row["question"]] * 3,
                 tests=[row["tests"]] * 3, entry_point=[None] * 3)  # fmt: skip
    assert got == [1.0, pytest.approx(2 / 3), 0.0]


def test_the_first_128_humaneval_problems_in_the_datasets_order(paper):
    """Unstructured code's downstream evaluation: HumanEval/0 … /127 (not the string order /0, /1, /10, /100, …),
    whose canonical solutions pass."""
    _, study = paper
    job = study.job("eval", task="unstructured_code", method="base", kind="code")
    problems = load_problems(job.code_eval, None, job.code, job.seed)
    assert [p["id"] for p in problems] == [f"HumanEval/{i}" for i in range(128)]
    cfg = CodeEvalConfig(n=1, ks=[1], bootstrap=10)
    subset = problems[:6]
    _, rows = score(subset, [[p["answer"]] for p in subset], "raw", cfg, seed=0)
    assert rows[0]["value"] == 1.0


def test_the_paper_profiles_evaluation_caps_are_per_task(paper):
    _, study = paper
    assert study.task("qa_code").eval.code.max_problems is None  # all 1,000 test rows
    assert study.task("unstructured_code").eval.code.max_problems == 128
    assert study.task("translation").eval.translation.max_records == 128
    assert study.task("translation").eval.ce.max_chunks == 128


def test_the_code_evaluation_and_the_translation_evaluation_run_end_to_end(paper, tiny_model_dir, tmp_path):
    """Through the CLI with a tiny model: both test forms and the translation scores produce records."""
    path, study = paper
    for task, kind in (("qa_code", "code"), ("unstructured_code", "code"), ("translation", "translation")):
        out = tmp_path / f"{task}.json"
        raw = yaml.safe_load(path.read_text())
        raw["eval"]["code"].update(n=1, ks=[1], max_new_tokens=8, bootstrap=10)
        raw["tasks"]["unstructured_code"]["eval"]["code"]["max_problems"] = 2
        raw["eval"]["translation"].update(max_new_tokens=8, bootstrap=10, comet_model=None)
        small = tmp_path / "small.yaml"
        small.write_text(yaml.safe_dump(raw))
        argv = [
            "eval",
            "--config",
            str(small),
            "--kind",
            kind,
            "--task",
            task,
            "--method",
            "base",
            "--model-dir",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--samples",
            str(tmp_path / f"{task}.jsonl"),
        ]
        assert main(argv) == 0  # fmt: skip
        record = json.loads(out.read_text())
        assert record["metrics"], task
        if kind == "code":  # the record counts the samples per sandbox outcome
            assert set(record["outcomes"]) == {"passed", "failed", "timeout", "memory", "error"}
            assert sum(record["outcomes"].values()) == {"qa_code": 3, "unstructured_code": 2}[task]
        lines = (tmp_path / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == {"qa_code": 3, "unstructured_code": 2, "translation": 5}[task]
    directions = {json.loads(x)["direction"] for x in lines}
    assert directions == {"de-en", "en-de", "zh-en", "en-zh"}
    bleu = {r["metric"]: r for r in record["metrics"]}
    assert "zh" in bleu["bleu[en-zh]"]["signature"] and "13a" in bleu["bleu[en-de]"]["signature"]


def test_response_code_takes_the_first_block_and_cuts_the_responses_own_tests():
    text = "Sure.\n```python\nimport math\n\ndef f(x):\n    return x\n\nif __name__ == '__main__':\n    f(1)\n```\n"
    assert response_code(text) == "import math\n\ndef f(x):\n    return x\n"
    assert response_code("def f():\n    return 1\nprint(f())\n") == "def f():\n    return 1\n"
    assert response_code("def f():\n    assert True\n    return 1\n") == "def f():\n    assert True\n    return 1\n"
    problem = {"question": "Write f.", "tests": ["assert f() == 1", "assert f() != 2"], "entry_point": None}
    program = extract_program(problem, "def f():\n    return 1\n", "raw")
    assert "Write f." not in program
    assert unit_test_programs(problem, program) == [
        (program, Tests("assert f() == 1\n")),
        (program, Tests("assert f() != 2\n")),
    ]


@pytest.mark.parametrize(
    "value,form,expected",
    [
        ("['assert f(1) == 2', '  ', 'assert g()']", "assert_list", ["assert f(1) == 2", "assert g()"]),
        (["assert f()"], "assert_list", ["assert f()"]),
        ("[]", "assert_list", None),
        ("def check(candidate):\n    assert candidate(1)\n", "check_function",
         "def check(candidate):\n    assert candidate(1)\n"),
    ],
)  # fmt: skip
def test_unit_tests_are_read_in_their_form(value, form, expected):
    assert parse_tests(value, form, "row 0") == expected


@pytest.mark.parametrize(
    "value,form,sentence",
    [
        ("assert f(", "assert_list", "not a Python list literal of assert statements"),
        ("[1, 2]", "assert_list", "not a list of assert statements"),
        (["assert f()"], "check_function", "set tests_form: assert_list"),
    ],
)
def test_tests_in_another_form_are_one_sentence(value, form, sentence):
    with pytest.raises(UserError, match=sentence):
        parse_tests(value, form, "row 0")


def test_an_alma_prompt_gives_the_source_sentence_or_one_sentence():
    prompt = "Translate this from Czech to English:\nCzech: Dobrý den.\nEnglish:"
    assert alma_pair(prompt, " Good day.", "cs-en", "row 0") == {"src_lang": "cs", "tgt_lang": "en",
                                                                 "source": "Dobrý den.", "reference": "Good day."}  # fmt: skip
    with pytest.raises(UserError, match="direction 'xx-en' is not"):
        alma_pair(prompt, "x", "xx-en", "row 0")
    with pytest.raises(UserError, match="cannot be read"):
        alma_pair("Translate: Dobrý den.", "x", "cs-en", "row 0")


def test_a_missing_split_or_column_is_one_sentence_and_never_another_split(tmp_path):
    """The released loader falls back to the train split when a split is missing; here that is an error."""
    from ebft.data import _hub_records

    folder = write_datasets(tmp_path)["sjelassi/wmt22_test"]
    with pytest.raises(UserError, match=r"could not load dataset .* \(split 'train'\).*fix the path or split"):
        _hub_records(HubSplit(path=str(folder), split="train"), "train")
    with pytest.raises(UserError, match="has no column 'source-target' .*columns: question, answer, source"):
        _hub_records(HubSplit(path=str(folder), split="test", direction_field="source-target"), "heldout")


def test_write_task_data_refuses_an_empty_side(tmp_path):
    from ebft.config import HubSource

    folder = str(write_datasets(tmp_path)["sjelassi/opencode-instruct_100k_200tok"])
    source = HubSource(train=HubSplit(path=folder, split="train"), heldout=HubSplit(path=folder, split="test",
                                                                                    max_examples=1))  # fmt: skip
    manifest = write_task_data("qa_code", source, 43, tmp_path / "out")
    assert manifest["splits"]["heldout"]["records"] == 1
    assert Path(tmp_path / "out/heldout.jsonl").is_file()


# --------------------------------------------------------------------------------------------------
# Before a real run: every hub model and dataset can be fetched from here
# --------------------------------------------------------------------------------------------------


def hub_error(cls):
    import httpx2 as httpx  # the HTTP client huggingface_hub is built on

    request = httpx.Request("GET", "https://huggingface.co/api/models/x")
    return cls("refused", response=httpx.Response(403, request=request))


def test_the_paper_profile_lists_its_hub_models_and_datasets():
    from ebft.hub import hub_repos

    study = load_study(yaml.safe_load((Path(__file__).parent.parent / "config/paper.yaml").read_text()))
    repos = hub_repos(study)
    assert [r[:2] for r in repos] == [
        ("model", "meta-llama/Llama-3.2-1B"), ("model", "Qwen/Qwen2.5-1.5B"), ("model", "Qwen/Qwen2.5-7B"),
        ("dataset", "sjelassi/opencode-instruct_100k_200tok"), ("dataset", "sjelassi/swallow_code_20m"),
        ("dataset", "sjelassi/alma"), ("dataset", "sjelassi/wmt22_test"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "error,sentence",
    [
        ("GatedRepoError", "is gated: accept its licence at https://huggingface.co/meta-llama/Llama-3.2-1B with your "
                           "account, then set HF_TOKEN"),
        ("RepositoryNotFoundError", "was not found on the hub, or is private"),
        ("HfHubHTTPError", "could not be checked on the hub (refused)"),
    ],
)  # fmt: skip
def test_a_gated_or_missing_repository_stops_the_run_in_one_sentence(monkeypatch, error, sentence):
    import huggingface_hub
    from huggingface_hub import errors

    import ebft.hub

    study = load_study(yaml.safe_load((Path(__file__).parent.parent / "config/paper.yaml").read_text()))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ebft.hub, "hub_reachable", lambda host, timeout=3.0: True)
    checked = []

    def auth_check(repo_id, repo_type):
        checked.append(repo_id)
        raise hub_error(getattr(errors, error))

    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    with pytest.raises(UserError, match=sentence.replace("(", r"\(").replace(")", r"\)")):
        ebft.hub.preflight(study)
    assert checked == ["meta-llama/Llama-3.2-1B"]


def test_preflight_needs_nothing_for_local_sources_and_names_an_offline_profile(tmp_path, monkeypatch):
    from ebft.hub import preflight

    raw = paper_profile_on_fixtures(tmp_path)  # local datasets, built-in models: nothing to fetch
    preflight(load_study(raw))
    paper = yaml.safe_load((Path(__file__).parent.parent / "config/paper.yaml").read_text())
    with pytest.raises(UserError, match="comes from the Hugging Face hub, but the profile sets offline: true"):
        preflight(load_study({**paper, "offline": True}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="but HF_HUB_OFFLINE=1 is set in this shell; unset it"):
        preflight(load_study(paper))


def test_a_real_paper_run_without_a_hub_stops_before_any_job(tmp_path, cli_env):
    """`snakemake --configfile config/paper.yaml` on a machine without the hub: one sentence, and no job started
    (a dry run lists every job offline: tests/test_workflow.py)."""
    import subprocess
    import sys

    env = {k: v for k, v in cli_env.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/paper.yaml", "--config",
           f"results_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Hub error: model 'meta-llama/Llama-3.2-1B' (models.llama32_1b) needs the Hugging Face hub, which is " \
           "unreachable from here (127.0.0.1)" in out  # fmt: skip
    assert "Traceback" not in out and not (tmp_path / "paper").exists()
