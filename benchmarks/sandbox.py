"""Sandbox cost: ``evals.sandbox.run_many`` against plain, unisolated subprocesses on the same programs.

    python -m benchmarks.sandbox [--workers 2 --repeats 3]
    python -m benchmarks.sandbox --samples results/cpu/eval/code/qa_code/base.samples.jsonl \
        --problems results/cpu/data/qa_code/heldout.jsonl --repeats 1

The programs are HumanEval's 164 canonical solutions with their tests (all pass). Three ways, each on a thread pool of
``--workers``: ``judged``, as the evaluations run them (the program in the sandbox, its tests in the judge, a second
interpreter); ``sandbox``, the program with its tests appended run in the sandbox alone (one interpreter, no verdict
the program cannot forge: the sandbox's own cost); and the reference, ``python -c PROGRAM`` in a plain subprocess with a
timeout, what an evaluation without a sandbox (but at least out of process) costs. Prints one JSON object: seconds for
the whole set (median of ``--repeats``), milliseconds per program, and the ratios to the reference.

With ``--samples`` (a code evaluation's samples file) and ``--problems`` (the records it was scored on) the programs are
those samples' instead, and the JSON also counts the programs whose status differs between ``judged`` and ``sandbox``
(the tests appended to the program, in one interpreter, as before the judge): the judge must not change which honest
programs pass. Those also run as RLVR's unit-test programs, whose per-sample rewards are compared the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evals.sandbox import isolation, run_many


def programs(samples: str | None = None, problems: str | None = None) -> tuple[list[tuple], list[str]]:
    """(program, tests) pairs as the evaluation judges them, and the same as one self-testing source each: HumanEval's
    canonical solutions, or the programs of a samples file scored against ``problems``."""
    from ebft.data import human_eval_records, read_records
    from evals.code import with_tests

    if samples is None:
        records = human_eval_records()
        items = [(r, r["question"] + r["answer"]) for r in records]
    else:
        by_id = {r["id"]: r for r in read_records(Path(problems))}
        items = [(by_id[s["problem"]], s["program"]) for s in map(json.loads, Path(samples).read_text().splitlines())]
    pairs = [with_tests(r, program) for r, program in items]
    return pairs, [appended(*pair) for pair in pairs]


def appended(program: str, tests) -> str:
    """A judged pair as one self-testing source, the tests appended to the program, as scored before the judge."""
    call = f"\n\ncheck({tests.entry})\n" if tests.entry is not None else ""
    return f"{program}\n\n{tests.code}{call}"


def unit_rewards(samples: str, problems: str, workers: int, timeout: float) -> dict:
    """RLVR's per-sample reward from judged unit-test programs against the same tests appended (one interpreter)."""
    from ebft.data import read_records
    from evals.code import unit_test_programs

    by_id = {r["id"]: r for r in read_records(Path(problems))}
    judged, combined, owner = [], [], []
    for i, s in enumerate(map(json.loads, Path(samples).read_text().splitlines())):
        problem = by_id[s["problem"]]
        for pair in unit_test_programs(problem, s["program"]):
            judged.append(pair)
            combined.append(appended(*pair))
            owner.append(i)
    rewards = {}
    for name, items in (("judged", judged), ("sandbox", combined)):
        passed: dict[int, list[bool]] = {}
        for i, r in zip(owner, run_many(items, timeout=timeout, workers=workers), strict=True):
            passed.setdefault(i, []).append(r.passed)
        rewards[name] = [sum(v) / len(v) for v in passed.values()]
    differ = sum(a != b for a, b in zip(rewards["judged"], rewards["sandbox"], strict=True))
    return {"unit_programs": len(judged), "rewards_differing": differ,
            "mean_reward_judged": round(sum(rewards["judged"]) / len(rewards["judged"]), 4),
            "mean_reward_sandbox": round(sum(rewards["sandbox"]) / len(rewards["sandbox"]), 4)}  # fmt: skip


def reference(codes: list[str], workers: int, timeout: float) -> list[bool]:
    def one(code: str) -> bool:
        try:
            return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, codes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--samples", help="a code evaluation's samples file (JSONL) instead of the canonical solutions")
    p.add_argument("--problems", help="with --samples: the held-out records the samples were scored against")
    a = p.parse_args()
    if bool(a.samples) != bool(a.problems):
        p.error("--samples and --problems go together")
    pairs, codes = programs(a.samples, a.problems)
    times = {"judged": [], "sandbox": [], "reference": []}
    passed, statuses = {}, {}
    for _ in range(a.repeats):
        for name, items in (("judged", pairs), ("sandbox", codes), ("reference", None)):
            t0 = time.time()
            if items is None:
                passed[name] = sum(reference(codes, a.workers, a.timeout))
            else:
                statuses[name] = [r.status for r in run_many(items, timeout=a.timeout, workers=a.workers)]
                passed[name] = statuses[name].count("passed")
            times[name].append(time.time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "workers": a.workers,
                      "programs": len(codes), "isolation": isolation().get("mode"),
                      **{f"passed_{k}": v for k, v in passed.items()},
                      **{f"{k}_s": round(v, 2) for k, v in med.items()},
                      **{f"{k}_ms_per_program": round(1000 * v / len(codes) * a.workers, 1) for k, v in med.items()},
                      "judged_over_reference": round(med["judged"] / med["reference"], 2),
                      "sandbox_over_reference": round(med["sandbox"] / med["reference"], 2),
                      "statuses_differing": sum(map(str.__ne__, statuses["judged"], statuses["sandbox"])),
                      **(unit_rewards(a.samples, a.problems, a.workers, a.timeout) if a.samples else {})}))  # fmt: skip


if __name__ == "__main__":
    main()
