"""benchmarks.job_times: per-job wall times from a Snakemake log, with jobs running side by side."""

from benchmarks.job_times import parse, summary

LOG = """Building DAG of jobs...
[Thu Dec  3 01:00:00 2026]
rule train_ebft:
    output: x
    jobid: 4
    wildcards: task=qa_code
    threads: 1

[Thu Dec  3 01:01:00 2026]
localrule eval_ce:
    jobid: 7
    wildcards: task=qa_code, method=base

[Thu Dec  3 01:03:00 2026]
Finished jobid: 7 (Rule: eval_ce)
1 of 3 steps (33%) done

[Thu Dec  3 01:10:00 2026]
Finished jobid: 4 (Rule: train_ebft)

[Thu Dec  3 01:10:00 2026]
rule eval_code:
    jobid: 9
    wildcards: task=qa_code, method=ebft
"""


def test_job_times_pairs_each_start_with_its_finish_and_counts_overlap():
    jobs = {j["jobid"]: j for j in parse(LOG.splitlines())}
    assert set(jobs) == {"4", "7", "9"}
    assert (jobs["4"]["end"] - jobs["4"]["start"]).total_seconds() == 600
    assert (jobs["7"]["end"] - jobs["7"]["start"]).total_seconds() == 120
    assert jobs["7"]["wildcards"] == "task=qa_code, method=base" and jobs["9"]["end"] is None
    text = summary(list(jobs.values()))
    # a 10-minute span holding 12 minutes of jobs
    assert text.startswith("span 10.0 min; job time 12.0 min; on average 1.20 jobs running")
    assert "unfinished: eval_code task=qa_code, method=ebft" in text
