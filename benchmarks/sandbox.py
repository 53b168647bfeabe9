"""Sandbox cost: ``evals.sandbox.run_many`` against plain, unisolated subprocesses on the same programs.

    python -m benchmarks.sandbox [--workers 2 --repeats 3]

The programs are HumanEval's 164 canonical solutions with their tests (all pass). The reference runs each as
``python -c PROGRAM`` in a subprocess with a timeout, on a thread pool of the same size: what an evaluation without a
sandbox (but at least out of process) costs. Prints one JSON object: seconds for the whole set (median of
``--repeats``), milliseconds per program, and the ratio sandbox / reference.
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

from evals.sandbox import isolation, run_many


def programs() -> list[str]:
    from ebft.data import human_eval_records
    from evals.code import with_tests

    return [with_tests(r, r["question"] + r["answer"]) for r in human_eval_records()]


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
    a = p.parse_args()
    codes = programs()
    times = {"sandbox": [], "reference": []}
    for _ in range(a.repeats):
        t0 = time.time()
        ok_sandbox = [r.passed for r in run_many(codes, timeout=a.timeout, workers=a.workers)]
        times["sandbox"].append(time.time() - t0)
        t0 = time.time()
        ok_reference = reference(codes, a.workers, a.timeout)
        times["reference"].append(time.time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "workers": a.workers,
                      "programs": len(codes), "isolation": isolation().get("mode"),
                      "passed_sandbox": sum(ok_sandbox), "passed_reference": sum(ok_reference),
                      "sandbox_s": round(med["sandbox"], 2), "reference_s": round(med["reference"], 2),
                      "sandbox_ms_per_program": round(1000 * med["sandbox"] / len(codes) * a.workers, 1),
                      "reference_ms_per_program": round(1000 * med["reference"] / len(codes) * a.workers, 1),
                      "sandbox_over_reference": round(med["sandbox"] / med["reference"], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
