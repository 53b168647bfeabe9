"""benchmarks.rollout's reference: a revision of this repository, checked before any timing and run from its files."""

import argparse
import subprocess
from pathlib import Path

import pytest

from benchmarks.rollout import REFERENCE_REV, checkout, reference_step, resolve

ROOT = Path(__file__).resolve().parent.parent


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_unknown_revision_is_one_sentence():
    with pytest.raises(SystemExit, match=r"'no-such-rev' is not a commit .*--reference none to leave it out"):
        resolve("no-such-rev")


def test_revision_resolves_to_its_commit():
    assert resolve("HEAD") == git("rev-parse", "HEAD")


def test_checkout_holds_the_revision_files(tmp_path):
    tree = checkout(resolve("HEAD"), tmp_path)
    assert (tree / "benchmarks" / "rollout.py").read_text() == git("show", "HEAD:benchmarks/rollout.py") + "\n"
    assert (tree / "ebft" / "trainer.py").is_file()


def test_reference_that_fails_is_an_error_the_run_records(tmp_path):
    """A reference tree whose train_steps does not run raises RuntimeError (train_steps records it and keeps this
    release's timings), not SystemExit."""
    args = argparse.Namespace(reference="abc", threads=1, c=8, s=8, G=8, n=4, temperature=0.6, seed=0)
    with pytest.raises(RuntimeError, match="revision abc failed to run its own train_steps"):
        reference_step(tmp_path, str(tmp_path), 64, args, "fp32")


@pytest.mark.skipif(git("rev-parse", "--is-shallow-repository") == "true", reason="a shallow clone lacks it")
def test_default_reference_is_the_code_before_the_shared_prefix(tmp_path):
    """The default reference is the step issue 13 measured: its trainer has no shared prefix and no logits chunks,
    and its benchmark exposes the train_steps the reference run calls."""
    tree = checkout(resolve(REFERENCE_REV), tmp_path)
    trainer = (tree / "ebft" / "trainer.py").read_text()
    assert "shared_prefix" not in trainer and "logits_chunk" not in trainer
    assert "def train_steps(model_dir, chunk, args, precision" in (tree / "benchmarks" / "rollout.py").read_text()
