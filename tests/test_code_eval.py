"""Code evaluation: prompts, stopping, extraction, unit-test splitting, and the whole pipeline on HumanEval."""

import json

import pytest

from ebft.config import CodeEvalConfig
from evals.code import (
    code_done,
    code_prompt,
    extract_program,
    load_problems,
    pass_rows,
    score,
    truncate_raw,
    unit_test_programs,
    with_tests,
)

PROBLEM = {
    "id": "toy/0",
    "question": 'from typing import List\n\n\ndef helper(x):\n    return x\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n',
    "answer": "    return helper(a) + b\n",
    "tests": "METADATA = {}\n\n\ndef check(candidate):\n    xs = [1, 2]\n    assert candidate(1, 2) == 3\n    for x in xs:\n        assert candidate(x, 0) == x\n    assert candidate(0, 0) == 1\n",
    "entry_point": "add",
}


def run(pair) -> bool:
    """Execute a trusted (program, tests) pair in-process, as the judge would but in one namespace (these tests check
    extraction and splitting, not the sandbox)."""
    program, tests = pair
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(program, "<test>", "exec"), namespace)
        exec(compile(tests.code, "<tests>", "exec"), namespace)
        if tests.entry:
            namespace["check"](namespace[tests.entry])
    except AssertionError:
        return False
    return True


def test_raw_completion_is_cut_at_the_humaneval_stop_sequences():
    completion = "    return helper(a) + b\n\n\ndef other():\n    pass\n"
    assert truncate_raw(completion) == "    return helper(a) + b\n\n"
    program = extract_program(PROBLEM, completion, "raw")
    assert program == PROBLEM["question"] + "    return helper(a) + b\n\n"
    assert code_done("raw")(completion) and not code_done("raw")("    return a")


@pytest.mark.parametrize(
    "completion",
    [
        "Sure!\n```python\ndef add(a: int, b: int) -> int:\n    return helper(a) + b\n```\nThis adds.",
        "```py\nimport math\n\ndef add(a, b):\n    return helper(a) + b\n```",
        "```\ndef add(a, b):\n    return helper(a) + b\n```",
        "Here:\n```python\nprint('example')\n```\nand\n```python\ndef add(a, b):\n    return helper(a) + b\n```",
        "```python\ndef add(a, b):\n    return helper(a) + b\n",  # unterminated block (hit the token limit)
        "def add(a, b):\n    return helper(a) + b\n",  # no fence at all
        "    return helper(a) + b\n",  # only the body: continues the prompt
    ],
)
def test_chat_extraction_finds_the_function_and_keeps_the_prompts_helpers(completion):
    program = extract_program(PROBLEM, completion, "chat")
    namespace = {}
    exec(compile(program, "<p>", "exec"), namespace)
    assert namespace["add"](2, 3) == 5  # helper() comes from the prompt's preamble
    assert "from typing import List" in program


def test_chat_stops_once_the_code_block_is_closed():
    done = code_done("chat")
    assert not done("Sure:\n```python\ndef add(a, b):")
    assert done("Sure:\n```python\ndef add(a, b):\n    return a + b\n```")


def test_chat_prompt_uses_the_chat_template_and_raw_prompt_is_the_problem(tiny_model_dir):
    from ebft.models import load_tokenizer

    smollm2_tokenizer = load_tokenizer(tiny_model_dir)  # SmolLM2's tokenizer and chat template
    chat = code_prompt(PROBLEM, smollm2_tokenizer, "chat")
    assert chat.startswith("<|im_start|>") and chat.rstrip().endswith("<|im_start|>assistant")
    assert "def add(a: int, b: int)" in chat
    assert code_prompt(PROBLEM, smollm2_tokenizer, "raw") == PROBLEM["question"]


def test_unit_tests_are_split_one_per_assert_with_set_up_kept():
    program = PROBLEM["question"] + "    return a + b\n"  # wrong for candidate(0, 0) == 1 only
    variants = unit_test_programs(PROBLEM, program)
    assert len(variants) == 3  # two asserts and one loop of asserts; `xs = …` is set-up, kept in each
    assert [run(v) for v in variants] == [True, True, False]
    assert run(with_tests(PROBLEM, program)) is False


def test_tests_without_a_check_function_are_one_unit():
    problem = {**PROBLEM, "tests": "assert add(1, 2) == 3\n\ndef check(c):\n    pass\n"}
    assert len(unit_test_programs(problem, problem["question"] + "    return a + b\n")) == 1


def test_pass_rows_average_the_unbiased_estimator_over_problems():
    samples = [{"problem": "a", "status": s} for s in ("passed", "failed", "failed", "failed")]
    samples += [{"problem": "b", "status": "failed"} for _ in range(4)]
    rows = {r["metric"]: r for r in pass_rows(samples, [1, 4], bootstrap=200, seed=0)}
    assert rows["pass@1"]["value"] == pytest.approx(0.125) and rows["pass@1"]["n"] == 2
    assert rows["pass@4"]["value"] == pytest.approx(0.5)
    assert rows["pass@4"]["ci_low"] <= 0.5 <= rows["pass@4"]["ci_high"]
    assert rows["pass@1"]["unit_ids"] == ["a", "b"] and rows["pass@1"]["unit_num"] == [0.25, 0.0]  # per problem
    assert rows["pass@4"]["unit_num"] == [1.0, 0.0] and rows["pass@4"]["unit_den"] == [1.0, 1.0]


def test_humaneval_canonical_solutions_score_one_and_empty_bodies_zero():
    """The whole scoring pipeline (prompt formats, extraction, sandbox, pass@k) on all 164 HumanEval problems."""
    cfg = CodeEvalConfig(n=1, ks=[1], greedy=True, timeout=10.0)
    problems = load_problems("human_eval", None, cfg, seed=43)
    assert len(problems) == 164
    raw = [[p["answer"]] for p in problems]
    chat = [[f"Here it is:\n```python\n{p['question']}{p['answer']}```\nDone."] for p in problems]
    empty = [[""] for _ in problems]
    for completions, fmt, expected in ((raw, "raw", 1.0), (chat, "chat", 1.0), (empty, "raw", 0.0)):
        samples, rows = score(problems, completions, fmt, cfg, seed=0)
        failing = [(s["problem"], s["status"], s["detail"]) for s in samples if (s["status"] == "passed") != expected]
        assert not failing, failing[:3]
        assert rows[0]["metric"] == "pass@1" and rows[0]["value"] == expected
        assert json.dumps(samples[0])  # every record is JSON-serialisable


def test_heldout_problems_come_from_the_task_data(tmp_path):
    cfg = CodeEvalConfig(human_eval_heldout=64)
    held = load_problems("human_eval", None, cfg, seed=43)
    assert len(held) == 64
    file = tmp_path / "heldout.jsonl"
    file.write_text("".join(json.dumps(p) + "\n" for p in held[:3]) + json.dumps({**held[3], "tests": None}) + "\n")
    assert [p["id"] for p in load_problems("heldout", file, cfg, seed=43)] == [p["id"] for p in held[:3]]


# --------------------------------------------------------------------------------------------------
# Sampling (evals.decode): prompts sorted by length, one prefill per prompt, finished rows dropped
# --------------------------------------------------------------------------------------------------

DECODE_PROMPTS = ["def f(x):", "import os\nimport sys\n\ndef main(argv):\n    '''Run.'''", "x", "class A:\n    pass",
                  "# a longer comment line, so that the batch needs real left padding\ndef g():"]  # fmt: skip


def stops_at_a_vowel(text: str) -> bool:  # ends rows at different steps, some never
    return any(v in text for v in "aeiou")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from ebft.models import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("done", [None, stops_at_a_vowel], ids=["to-the-limit", "early-stop"])
def test_greedy_decoding_equals_transformers_generate(tiny_lm, done):
    """Greedy completions of the evaluations' sampler equal transformers' generate with the same stops, for prompts of
    different lengths in batches that need left padding and lose finished rows."""
    from evals.code import hf_generate
    from evals.decode import decode

    model, tok = tiny_lm
    kw = dict(greedy=True, temperature=0.6, top_p=0.95, max_new_tokens=12, batch_size=2, done=done, seed=0)
    ours = decode(model, tok, DECODE_PROMPTS, n=1, **kw)
    assert ours == hf_generate(model, tok, DECODE_PROMPTS, n=1, **kw)  # generate refuses greedy with n > 1
    assert decode(model, tok, DECODE_PROMPTS, n=2, **kw) == [group * 2 for group in ours]  # the prefill's copies
    lengths = {len(tok(c, add_special_tokens=False)["input_ids"]) for group in ours for c in group}
    assert len(lengths) > 1 if done else lengths  # some rows stopped early


def test_a_sampled_completion_depends_on_its_seed_not_on_its_batch(tiny_lm):
    """Each sample draws from its own stream (seed, prompt, sample): the same completions whatever the batch size, a
    prompt's samples differ from each other, another seed gives others, and every stop rule holds."""
    from evals.decode import decode

    model, tok = tiny_lm
    kw = dict(n=3, greedy=False, temperature=1.0, top_p=0.9, max_new_tokens=10, done=stops_at_a_vowel)
    one = decode(model, tok, DECODE_PROMPTS, batch_size=1, seed=5, **kw)
    assert decode(model, tok, DECODE_PROMPTS, batch_size=4, seed=5, **kw) == one
    assert decode(model, tok, DECODE_PROMPTS, batch_size=4, seed=6, **kw) != one
    assert [len(group) for group in one] == [3] * len(DECODE_PROMPTS)
    assert any(len(set(group)) > 1 for group in one)
    for group in one:
        for text in group:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert len(ids) <= 10
            # a completion ends at its first vowel: no text before its last token already held one
            assert not stops_at_a_vowel(tok.decode(ids[:-1])) if ids else True


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_the_preallocated_cache_decodes_what_the_dynamic_cache_does(tiny_lm, monkeypatch, greedy):
    """The evaluations' cache (buffers written in place, rows dropped as they finish) gives the completions of
    transformers' DynamicCache, token for token, including a capacity too small for the completions (it grows)."""
    from transformers import DynamicCache

    import evals.decode as D

    model, tok = tiny_lm
    kw = dict(n=2, greedy=greedy, temperature=1.0, top_p=0.9, max_new_tokens=12, batch_size=3, done=stops_at_a_vowel,
              seed=3)  # fmt: skip
    ours = D.decode(model, tok, DECODE_PROMPTS, **kw)
    created = []
    preallocated = D.preallocated_cache
    monkeypatch.setattr(D, "preallocated_cache", lambda m, capacity: created.append(preallocated(m, 2)) or created[-1])
    assert D.decode(model, tok, DECODE_PROMPTS, **kw) == ours  # buffers of 2 positions, grown at the prefill
    assert all(layer.buffers[0].shape[-2] > 2 for cache in created for layer in cache.layers)
    monkeypatch.setattr(D, "preallocated_cache", lambda m, capacity: DynamicCache(config=m.config))
    assert D.decode(model, tok, DECODE_PROMPTS, **kw) == ours
