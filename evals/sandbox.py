"""Sandbox for untrusted, model-generated Python programs (pass@k code evaluation and the RL reward).

``run_program(code)`` runs ``code`` as ``__main__`` of a fresh ``sys.executable`` and classifies the outcome:

* ``passed``: the program ran to its end and the interpreter exited 0. A trusted wrapper runs the code and, from the
  last atexit callback, writes a random per-run token (held only as that callback's argument, never in a variable the
  program can see) to a channel the harness reads. So ``os._exit(0)`` before the tests, ``sys.exit(0)``/``exit()``
  anywhere (reported ``failed``, "called sys.exit(0)"), an exception in an atexit callback and signals all fail.
* ``failed``: an exception (the detail is the traceback's last line, e.g. "AssertionError"; a syntax error is
  ``failed`` too, "SyntaxError: ..."), a ``SystemExit``, or a non-zero / premature exit.
* ``timeout``: wall clock (``timeout``) or CPU limit (about ``timeout`` + 1 s) exceeded.
* ``memory``: ``MemoryError``, normally from the address-space limit (``memory_mb``).
* ``error``: killed by a signal, or the sandbox itself failed.

Every run gets a trusted launcher (this module's ``_Launcher``, run as ``python -I -S -B -c``, never a
``preexec_fn``) in its own session; it builds the layers below, forks the program and relays its status. The program
gets a scrubbed environment (PATH, LANG=C.UTF-8, PYTHONHASHSEED=0, HOME=TMPDIR=cwd=a fresh ``mkdtemp`` directory,
removed afterwards), stdin at EOF, stdout+stderr in an anonymous file of which the harness reads at most
``max_output_bytes`` (RLIMIT_FSIZE, 10 MiB, stops a flood), the interpreter flags ``-s -P -B`` (``-I`` minus ``-E``,
so that PYTHONHASHSEED applies; the environment holds nothing else), rlimits (AS, CPU, FSIZE, NOFILE 64, CORE 0, NPROC
64 where the count is private to the run), no capabilities (SECBIT_NOROOT + no_new_privs) and, where the kernel has
it, Landlock: no file writes outside its directory (and /dev/null), no TCP, and (ABI >= 6) no signals to and no
abstract-socket connections to processes outside the sandbox. The launcher kills whatever the program left running
when it ends or times out; the harness kills the launcher's process group after ``timeout`` + 1 s whatever happens.

Modes, tried in this order (``isolation()`` reports what is active; the choice is made once by a probe run):

1. ``namespace``: new user, PID, network and mount namespaces. The program runs as uid 0 of the user namespace
   (no capabilities), mapped to a unique unused uid when the harness is root (to the caller's uid otherwise); it is
   process 2 under a launcher-forked init, so ``getppid()`` is 1 and when init exits the kernel kills every
   descendant, setsid and double-fork included. It sees its own /proc only, an unconfigured network namespace (no
   network at all), the whole filesystem read-only except its tmpfs working directory (32 MiB), and empty tmpfs
   in place of the caller's home and of any directory other users may not enter (the interpreter's prefix is bound
   back in). Not protected: reading world-readable files (e.g. /etc, the repository); CPU, memory (the limit is
   per process: up to 64 × ``memory_mb`` per run) and disk bandwidth; kernel bugs. If the interpreter's own
   directory is closed to other users, a root harness keeps uid 0 in the namespace (no capabilities, read-only
   mounts), and only Landlock keeps device nodes such as the host's disks out of reach.
2. ``fallback`` (no user namespaces, or ``EBFT_SANDBOX_FALLBACK=seccomp|python``): network blocked by a seccomp
   filter (``socket()`` fails with EACCES except AF_UNIX; io_uring off; x86_64 and aarch64 only), else
   (``python``, unknown arch) by patching ``socket.socket`` in the wrapper, which ``_socket`` bypasses. The
   launcher is a child subreaper and at the end kills every descendant, setsid and double-fork ones included. A
   root harness runs the program under a unique uid when other users may use the interpreter; otherwise (e.g. an
   interpreter under /root) as root without capabilities: then seccomp also denies it AF_UNIX sockets and
   chmod/utime/xattr changes, which Landlock leaves alone (in its own directory too), and only Landlock keeps it
   from writing root's files, signalling the harness and reading other processes' memory or environment. Without
   Landlock those stay open to a program of the caller's uid, as does reading any file that uid can read, and a
   non-root program can kill its launcher and leave setsid escapees behind. RLIMIT_NPROC does not bind root, so a
   root program's fork bomb ends only at the timeout.

A program that deliberately searches its own memory for the token (ctypes, /proc/self/mem), or replaces
``sys.unraisablehook`` and then fails in an atexit callback, can still fake a pass: the end marker guards against
programs that stop early, not against ones written to defeat it.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import errno
import fcntl
import functools
import inspect
import itertools
import marshal
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["ExecutionResult", "isolation", "run_many", "run_program"]

FALLBACK_ENV = "EBFT_SANDBOX_FALLBACK"  # "seccomp": skip namespaces; "python": skip namespaces and seccomp
TEMP_ROOT: str | None = None  # parent of the per-run directories (None: tempfile's default)
GRACE_S = 1.0  # how long the harness waits beyond the timeout before it kills the launcher itself
STATUSES = ("passed", "failed", "timeout", "memory", "error")


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one sandboxed program: ``status`` is one of STATUSES, ``detail`` a short reason."""

    status: str
    detail: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _wrapper() -> None:
    """Runs in the sandboxed interpreter (its source is passed with ``-c``).

    Reads the end token and the program from stdin, points stdin at /dev/null, runs the program as ``__main__`` and
    reports to fd 3: a ``\\0fail`` line on an exception, the token from the last atexit callback on success.
    """
    import atexit
    import os
    import sys

    ended = []

    def describe(exc: BaseException) -> str:
        try:
            import traceback

            return traceback.format_exception_only(type(exc), exc)[-1].strip()
        except Exception:
            return type(exc).__name__

    def report(kind: str, detail: str) -> None:
        atexit.unregister(finish)
        os.write(3, f"\n\0fail\t{kind}\t{' '.join(detail.split())[:300]}\n".encode(errors="replace"))

    def finish(token: bytes) -> None:
        if ended:
            os.write(3, b"\n" + token + b"\n")

    def unraisable(args, default=sys.unraisablehook) -> None:
        if "atexit" in str(args.err_msg) and args.exc_value is not None:
            report("failed", "exception in an atexit callback: " + describe(args.exc_value))
        default(args)

    def load() -> str:
        data = sys.stdin.buffer.read()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        token, _, code = data.partition(b"\n")
        atexit.register(finish, token)  # registered first, so it runs after the program's own callbacks
        return code.decode("utf-8", "surrogatepass")

    def block_network() -> None:
        import socket

        original = socket.socket.__init__

        def guarded(self, family=-1, type=-1, proto=-1, fileno=None) -> None:
            if fileno is None and family != socket.AF_UNIX:
                raise PermissionError(13, "network access is disabled in this sandbox")
            original(self, family, type, proto, fileno)

        socket.socket.__init__ = guarded

    sys.unraisablehook = unraisable
    code = load()
    if sys.argv[1:] == ["block-network"]:
        block_network()
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    try:
        exec(compile(code, "<program>", "exec"), main.__dict__)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            report("failed", f"called sys.exit({exc.code!r})")
        else:
            report("memory" if isinstance(exc, MemoryError) else "failed", describe(exc))
            try:
                import traceback

                traceback.print_exception(exc)
            except Exception:
                pass
        raise SystemExit(1) from None
    ended.append(True)


class _Launcher:
    """The trusted launcher: its source runs as ``python -I -S -B -c``, one process per program.

    Reads its configuration (marshal) from fd 0, the control file shared with the harness, then empties it; fd 3
    (a copy) stays the control channel, and the launcher's last act is to append its report there. In namespace
    mode: helper (writes the id maps) ← launcher (unshares) → init (PID 1: mounts, reaps) → program. In fallback:
    launcher (subreaper) → program.
    """

    CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
    MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC = 0x2, 0x4, 0x8, 0x1000, 0x4000
    PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 22, 28, 36, 38
    SECBITS_NOROOT_LOCKED = 0x2F  # NOROOT, NO_SETUID_FIXUP and KEEP_CAPS_LOCKED, all locked: exec grants no caps
    SYS_MOUNT_SETATTR, SYS_LANDLOCK_CREATE, SYS_LANDLOCK_ADD, SYS_LANDLOCK_RESTRICT = 442, 444, 445, 446
    SECCOMP_ARCH = {  # audit arch, socket(), then chmod, utime and xattr-setting calls (denied to a root program)
        "x86_64": (0xC000003E, 41, (90, 91, 268, 452, 132, 235, 261, 280, 188, 189, 190, 197, 198, 199, 463, 466)),
        "aarch64": (0xC00000B7, 198, (52, 53, 452, 88, 5, 6, 7, 14, 15, 16, 463, 466)),
    }
    FSIZE, NOFILE, NPROC, WORKDIR_TMPFS = 10 << 20, 64, 64, "size=32m,nr_inodes=4096,mode=700"

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
        report = {"status": None, "timed_out": False, "error": None}
        layers = {"mode": "fallback", "uid": "unique" if cfg["uid"] != self.euid else "caller"}
        try:
            fds = self.enter_namespaces() if cfg["namespaces"] else None
            self.call("prctl", self.PR_SET_DUMPABLE, 0, 0, 0, 0)  # keeps the token in memory out of reach
            deadline = time.monotonic() + cfg["timeout"]
            if fds is not None:
                layers.update(mode="namespace", hidden=[hidden for hidden, _ in cfg["hide"]])
                child = os.fork()
                if child == 0:
                    self.init(fds)
            else:
                layers["subreaper"] = self.attempt("prctl", self.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
                child = self.spawn(namespaced=False)
            os.close(self.info_w)
            report["timed_out"] = not self.wait_exit(child, deadline - time.monotonic())
            if report["timed_out"]:
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
        os.makedirs(workdir, exist_ok=True)  # it may lie under a hidden directory
        proc = self.attempt("mount", b"proc", b"/proc", b"proc", self.MS_NOSUID | self.MS_NODEV | self.MS_NOEXEC, None)
        attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)  # struct mount_attr: attr_set = MOUNT_ATTR_RDONLY
        read_only = self.attempt("syscall", self.SYS_MOUNT_SETATTR, -100, b"/", 0x8000, ctypes.byref(attr), 32)
        tmpfs = self.attempt(
            "mount", b"tmpfs", workdir.encode(), b"tmpfs", self.MS_NOSUID | self.MS_NODEV, self.WORKDIR_TMPFS.encode()
        )
        return {"private_proc": proc, "read_only_root": read_only, "tmpfs_workdir": tmpfs}

    def spawn(self, namespaced: bool) -> int:
        """Fork the program's process and feed it the token and the code through a pipe on its stdin."""
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
        data = memoryview(self.cfg["nonce"] + b"\n" + self.cfg["code"])
        with contextlib.suppress(BrokenPipeError):
            while data:
                data = data[os.write(w, data) :]
        os.close(w)
        return pid

    def exec_program(self, stdin: int, namespaced: bool) -> None:
        """In the program's process: identity, limits, capabilities, Landlock, seccomp, then exec the wrapper."""
        cfg = self.cfg
        os.dup2(stdin, 0)
        os.set_inheritable(3, True)
        os.chdir(cfg["workdir"])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if namespaced:
            os.setsid()
        elif cfg["uid"] != self.euid:
            os.setgroups([])
            os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
            os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
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
        filtered = 0 if namespaced or not cfg["seccomp"] else self.seccomp()
        network = "namespace" if namespaced else "seccomp" if filtered else "python-only"
        self.tell(landlock=landlock, network=network, metadata_syscalls_denied=int(filtered == 2))
        argv = [cfg["python"], "-s", "-P", "-B", "-c", cfg["wrapper"]] + (
            ["block-network"] if network == "python-only" else []
        )
        os.execve(cfg["python"], argv, os.environ)

    def landlock(self) -> int:
        """Allow file writes only under the working directory (and to /dev/null); deny TCP and, from ABI 6,
        signals and abstract Unix sockets across the sandbox boundary. Returns the Landlock ABI, 0 if unavailable."""
        try:
            abi = self.call("syscall", self.SYS_LANDLOCK_CREATE, None, 0, 1)
            fs = 0x1FF2 | (0x2000 if abi >= 2 else 0) | (0x4000 if abi >= 3 else 0)  # writes, REFER, TRUNCATE
            attr = (ctypes.c_uint64 * 3)(fs, 0x3 if abi >= 4 else 0, 0x3 if abi >= 6 else 0)
            ruleset = self.call("syscall", self.SYS_LANDLOCK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr), 0)
            for path, access in ((self.cfg["workdir"], fs), (os.devnull, fs & 0x4002)):
                rule = self.PathBeneath(access, os.open(path, os.O_PATH))
                self.call("syscall", self.SYS_LANDLOCK_ADD, ruleset, 1, ctypes.byref(rule), 0)
                os.close(rule.parent_fd)
            self.call("syscall", self.SYS_LANDLOCK_RESTRICT, ruleset, 0)
            os.close(ruleset)
            return abi
        except OSError:
            return 0

    def seccomp(self) -> int:
        """Make ``socket()`` fail with EACCES except for AF_UNIX and disable io_uring; for a program running as root
        (no capabilities, but the owner of root's files) also deny AF_UNIX and changes to file modes, times and
        extended attributes, which Landlock does not cover (in its own directory too). Returns 0 if no filter could
        be installed, 1 for the network filter, 2 with the root-only part."""
        if (arch := self.SECCOMP_ARCH.get(os.uname().machine)) is None:
            return 0
        audit, nr_socket, metadata = arch
        root = os.geteuid() == 0
        deny, allow = 0x50000 | errno.EACCES, 0x7FFF0000
        ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
        checks = [(jge, 0x40000000), (jeq, 425)] + [(jeq, nr) for nr in metadata if root]  # x32 ABI, io_uring_setup
        code = [(ld, 0, 0, 4), (jeq, 1, 0, audit), (ret, 0, 0, deny), (ld, 0, 0, 0)]  # another ABI: deny all
        code += [(op, len(checks) + 2 - i, 0, k) for i, (op, k) in enumerate(checks)]  # → the deny below
        code += [
            (jeq, 0, 3, nr_socket),
            (ld, 0, 0, 16),
            (jeq, 0 if root else 1, 0, 1),
            (ret, 0, 0, deny),
            (ret, 0, 0, allow),
        ]
        filters = (self.SockFilter * len(code))(*(self.SockFilter(*insn) for insn in code))
        prog = self.SockFprog(len(code), ctypes.addressof(filters))
        return self.attempt("prctl", self.PR_SET_SECCOMP, 2, ctypes.byref(prog), 0, 0) * (2 if root else 1)

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


def _source(obj: object, call: str, imports: str) -> str:
    return f"from __future__ import annotations\n{imports}\n{textwrap.dedent(inspect.getsource(obj))}\n{call}\n"


_LAUNCHER = _source(
    _Launcher, "_Launcher().run()", "import contextlib, ctypes, errno, marshal, os, resource, select, signal, time"
)
_WRAPPER = _source(_wrapper, "_wrapper()", "")
_next_uid = itertools.count(1_000_000_000 + secrets.randbelow(500_000_000)).__next__  # unused by any real account


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


def _tail(f, limit: int) -> bytes:
    size = os.fstat(f.fileno()).st_size
    return os.pread(f.fileno(), min(limit, size), max(0, size - limit))


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


def _classify(report: dict | None, ctl: str, output: str, nonce: str, timeout: float) -> tuple[str, str]:
    last_output = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    if report is None:
        return "error", f"sandbox failed without a report: {last_output}".strip()
    if report["error"]:
        return "error", f"sandbox failed: {report['error']}"
    if report["timed_out"]:
        return "timeout", f"timed out after {timeout:g} s"
    status = report["status"]
    if not isinstance(status, int):
        return "error", "sandbox failed: no exit status"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded"
        try:
            return "error", f"killed by signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return "error", f"killed by signal {sig}"
    code = os.waitstatus_to_exitcode(status)
    fails = [line.split("\t", 2) for line in ctl.split("\n") if line.startswith("\0fail\t") and line.count("\t") >= 2]
    if fails and fails[-1][1] in ("failed", "memory"):
        return fails[-1][1], fails[-1][2]
    if code == 0:
        if f"\n{nonce}\n" in ctl:
            return "passed", "exit status 0"
        return "failed", "exited with status 0 before the program's end (os._exit?)"
    kind = "memory" if "MemoryError" in last_output else "failed"
    return kind, f"exit status {code}: {last_output}" if last_output else f"exit status {code}"


def _execute(
    code: str, *, timeout: float, memory_mb: int, max_output_bytes: int, namespaces: bool, seccomp: bool
) -> tuple[ExecutionResult, dict]:
    """Run one program; returns its result and the launcher's report of the active layers."""
    start = time.monotonic()
    root = TEMP_ROOT or tempfile.gettempdir()
    workdir = tempfile.mkdtemp(prefix="ebft-sbx-", dir=root)
    try:
        uid, gid, hide = _identity(workdir, namespaces)
        if uid != os.geteuid():
            os.chown(workdir, uid, gid)
        nonce = secrets.token_hex(16)
        cfg = {"nonce": nonce.encode(), "code": code.encode("utf-8", "surrogatepass"), "timeout": float(timeout),
               "memory_mb": int(memory_mb), "workdir": workdir, "uid": uid, "gid": gid, "namespaces": namespaces,
               "seccomp": seccomp, "hide": hide, "python": sys.executable, "wrapper": _WRAPPER}  # fmt: skip
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}  # fmt: skip
        with tempfile.TemporaryFile(dir=root) as ctl, tempfile.TemporaryFile(dir=root) as out:
            ctl.write(marshal.dumps(cfg))
            ctl.flush()
            fcntl.fcntl(ctl.fileno(), fcntl.F_SETFL, fcntl.fcntl(ctl.fileno(), fcntl.F_GETFL) | os.O_APPEND)
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", "-c", _LAUNCHER], stdin=ctl, stdout=out,
                                    stderr=out, cwd="/", env=env, start_new_session=True)  # fmt: skip
            finished = _Launcher.wait_exit(proc.pid, timeout + GRACE_S)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers; the unreaped launcher keeps its group id reserved
            proc.wait()
            ctl_text = _tail(ctl, 1 << 16).decode("utf-8", "replace")
            output = _tail(out, max_output_bytes).decode("utf-8", "replace")
    except OSError as exc:
        return ExecutionResult("error", f"sandbox could not run: {exc}"[:300], time.monotonic() - start), {}
    finally:
        _remove(workdir)
    report = None
    if proc.returncode == 0 and (at := ctl_text.rfind("\n\0sandbox ")) >= 0:  # the launcher's line is the last
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            report = ast.literal_eval(ctl_text[at + 10 :].split("\n", 1)[0])
    if finished:
        status, detail = _classify(report, ctl_text, output, nonce, timeout)
    else:
        status, detail = "timeout", f"timed out after {timeout:g} s (launcher unresponsive)"
    layers = report["layers"] if report else {}
    return ExecutionResult(status, detail[:300], time.monotonic() - start), layers


@functools.cache
def _settings(forced: str) -> tuple[bool, bool, dict]:
    """(namespaces, seccomp, layers) for this machine, found by probe runs; ``forced`` is FALLBACK_ENV's value."""
    seccomp = forced != "python"
    probe = {"code": "import math, re, collections, itertools, hashlib, typing", "timeout": 10.0, "memory_mb": 1024,
             "max_output_bytes": 4096}  # fmt: skip
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
    return {**layers, "pid_namespace": namespaces, "user_namespace": namespaces, "rlimits": True}


def run_program(
    code: str, *, timeout: float = 3.0, memory_mb: int = 1024, max_output_bytes: int = 64_000
) -> ExecutionResult:
    """Run ``code`` in the sandbox and classify the outcome (see the module docstring)."""
    namespaces, seccomp, _ = _current()
    return _execute(code, timeout=timeout, memory_mb=memory_mb, max_output_bytes=max_output_bytes,
                    namespaces=namespaces, seccomp=seccomp)[0]  # fmt: skip


def run_many(
    programs: list[str], *, timeout: float = 3.0, memory_mb: int = 1024, workers: int | None = None,
    progress: str | None = None,
) -> list[ExecutionResult]:  # fmt: skip
    """Run programs on a bounded thread pool (default: one worker per CPU); results in input order, never raises.

    ``progress`` names a progress bar (with rate and time left) on stderr; None shows none.
    """

    def one(code: str) -> ExecutionResult:
        try:
            return run_program(code, timeout=timeout, memory_mb=memory_mb)
        except Exception as exc:
            return ExecutionResult("error", f"sandbox error: {type(exc).__name__}: {exc}"[:300], 0.0)

    _current()  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(one, programs)
        if progress is not None:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(programs), desc=progress, unit="program")
        return list(results)
