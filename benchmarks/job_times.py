"""Where a workflow run's time went: each job's wall time, per rule, from a Snakemake log.

    python -m benchmarks.job_times .snakemake/log/<run>.snakemake.log [--csv jobs.csv]

Snakemake stamps each job's start (``rule X:`` / ``localrule X:`` after a ``[date]`` line) and end (``Finished
jobid: N``). This prints the run's span, the sum of the job times (above the span where jobs ran side by side), the
average number of jobs running, and per rule the number of jobs, their total and their range; ``--csv`` writes one
row per job. Jobs that did not finish in the log are listed as unfinished.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
FINISH = re.compile(r"^Finished jobid: (\d+)")


def parse(lines: list[str]) -> list[dict]:
    """One dict per job started in the log: rule, jobid, wildcards, start and end (None if unfinished)."""
    jobs: dict[str, dict] = {}
    stamp, current = None, None
    for line in (raw.rstrip("\n") for raw in lines):
        if m := STAMP.match(line):
            stamp, current = datetime.strptime(" ".join(m[1].split()), "%a %b %d %H:%M:%S %Y"), None
        elif (m := START.match(line)) and stamp is not None:
            current = {"rule": m[1], "jobid": None, "wildcards": "", "start": stamp, "end": None}
        elif current is not None and line.strip().startswith("jobid:"):
            current["jobid"] = line.split(":", 1)[1].strip()
            jobs[current["jobid"]] = current
        elif current is not None and line.strip().startswith("wildcards:"):
            current["wildcards"] = line.split(":", 1)[1].strip()
        elif (m := FINISH.match(line)) and m[1] in jobs and stamp is not None:
            jobs[m[1]]["end"] = stamp
    return list(jobs.values())


def summary(jobs: list[dict]) -> str:
    done = [j for j in jobs if j["end"] is not None]
    if not done:
        return "no finished job in the log"
    span = (max(j["end"] for j in done) - min(j["start"] for j in jobs)).total_seconds()
    busy = sum((j["end"] - j["start"]).total_seconds() for j in done)
    out = [f"span {span / 60:.1f} min; job time {busy / 60:.1f} min; on average {busy / span:.2f} jobs running"]
    rules: dict[str, list[float]] = {}
    for j in done:
        rules.setdefault(j["rule"], []).append((j["end"] - j["start"]).total_seconds())
    for rule, times in sorted(rules.items(), key=lambda kv: -sum(kv[1])):
        out.append(f"  {rule:<32} {len(times):>3} jobs {sum(times) / 60:7.1f} min "
                   f"({min(times) / 60:.1f}–{max(times) / 60:.1f} min each)")  # fmt: skip
    for j in sorted(done, key=lambda j: j["start"]):
        out.append(f"    {j['rule']:<20} {j['wildcards']:<48} {(j['end'] - j['start']).total_seconds() / 60:6.1f} min")
    out += [f"  unfinished: {j['rule']} {j['wildcards']}" for j in jobs if j["end"] is None]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path, help="a Snakemake log (.snakemake/log/*.snakemake.log)")
    p.add_argument("--csv", type=Path, help="write one row per job here")
    args = p.parse_args(argv)
    if not args.log.is_file():
        print(f"job_times: {args.log} does not exist; pass a file from .snakemake/log/.", file=sys.stderr)
        return 2
    jobs = parse(args.log.read_text().splitlines())
    print(summary(jobs))
    if args.csv:
        import pandas as pd

        pd.DataFrame([{**j, "seconds": (j["end"] - j["start"]).total_seconds() if j["end"] else None} for j in jobs]
                     ).to_csv(args.csv, index=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
