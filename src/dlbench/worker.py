"""A fork server for ``dlbench`` jobs: torch, timm and the registries are imported once, not once per job.

Why: every Snakemake job is a fresh ``dlbench <verb>`` process, and importing torch + timm (which pulls
in torchvision and torch._dynamo) costs 5-6 s of CPU, ~9 s when the CPU is shared; over the default
DAG's ~200 jobs that is about a third of its CPU time. With ``DLBENCH_WORKER=1`` (or ``auto``, which
local Snakemake runs set: ``workflow/rules/common.smk``) the ``dlbench`` command is a thin client
(``dlbench.cli.main`` imports nothing heavy) that asks a long-lived server to fork a child for the
verb, and exits with the child's status. Unset or ``0``: the verb runs in-process, as always.

Client (``run_via_worker``): connects to ``<dir>/<key>.sock``; when nothing answers it starts the
server (a new session, stdio to ``<key>.log``; one starter at a time through ``<dir>/start.lock``)
and waits up to START_TIMEOUT for it to listen. It sends argv, cwd, the environment, umask, niceness,
CPU affinity and the signals it ignores (JSON), and passes its fds 0-2 (SCM_RIGHTS), so the job
writes where ``> log 2>&1`` points. SIGTERM/SIGINT/SIGHUP are forwarded to the job's process group;
an exit code is returned, a job killed by a signal kills the client with the same signal. Anything
failing before the job started (no AF_UNIX, unwritable socket dir, no server within START_TIMEOUT)
falls back to running in-process, with one line on stderr.

Server (``serve``): listens first, then imports the heavy modules (``preload``) but never runs a torch
op, so no OpenMP pool exists when it forks (a fork after OpenMP started can hang the child). Per job
it forks a child that takes the client's fds, cwd, environment and signal dispositions and runs
``dlbench.cli.run_in_process(argv)`` (``--threads`` is the CLI's torch.set_num_threads call, made in the
child, where no thread pool exists yet), then ends as the interpreter would: non-daemon threads joined,
atexit handlers run (minus the preload's own weakref finalizers, which only free what dies with the
child). The server reaps children and sends each status to its client. When a
client's connection closes (the client was SIGKILLed) the job's process group is SIGKILLed at once;
when the server dies, PR_SET_PDEATHSIG kills its jobs. It exits after DLBENCH_WORKER_IDLE seconds
(default 60) without a running job.

Staleness: the key hashes the interpreter and its flags, sys.path, the mtimes and sizes of the
package's source files, torch's and timm's version files, and the environment variables read when
the interpreter or a library starts (PYTHON*, OMP_*, MKL_*, OPENBLAS_*, TORCH*, LC_*/LANG, ...;
Snakemake sets OMP_NUM_THREADS and friends to each job's threads, so jobs with different thread
counts use different servers). An edit starts a fresh server; two checkouts never share one.
Results are bit-identical to in-process runs (each job forks from the same pristine state, and
torch's RNG is untouched by the imports; tests/unit/test_worker.py checks a training run).

Benchmarks: Snakemake's ``benchmark:`` files measure the client's process tree, i.e. almost nothing.
Every job therefore ends with one line on its stderr (the job log):
``dlbench worker: job cpu 12.3s wall 10.1s threads 4`` -- its own CPU seconds (getrusage of the
child and its children) and wall time, and torch's intra-op thread count.

Environment: DLBENCH_WORKER (0/unset: off; 1/auto: on), DLBENCH_WORKER_DIR (socket directory; default
``<tmp>/dlbench-worker-<uid>``), DLBENCH_WORKER_IDLE (seconds), DLBENCH_WORKER_PRELOAD=0 (import
nothing ahead: protocol tests, debugging). ``python -m dlbench.worker status|stop`` lists or stops the
servers in the socket directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

# the client runs on every job: only cheap imports above (ast, subprocess, selectors, ... where needed)

ENV_WORKER = "DLBENCH_WORKER"
ENV_DIR = "DLBENCH_WORKER_DIR"
ENV_IDLE = "DLBENCH_WORKER_IDLE"
ENV_PRELOAD = "DLBENCH_WORKER_PRELOAD"
_ENV_SYSPATH = "DLBENCH_WORKER_SYSPATH"  # client -> server start-up only
_ENV_READY_FD = "DLBENCH_WORKER_READY_FD"

DEFAULT_IDLE = 60.0
START_TIMEOUT = 5.0  # for the server to listen (it imports the heavy modules after that)
ACK_TIMEOUT = 180.0  # for the job to be forked: a fresh server preloads first (5-9 s, more when busy)
REQUEST_TIMEOUT = 10.0

# read by the interpreter or a library when it starts: a server only serves clients that agree on them
KEY_ENV_PREFIXES = ("PYTHON", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_", "VECLIB_", "NUMEXPR_",
                    "TORCH", "PYTORCH_", "TIMM_", "HF_", "LC_", "LD_")
KEY_ENV_NAMES = ("LANG",)
# set by torch itself once it computed its compile cache (Snakemake's parse does, when its cache misses); read on use
KEY_ENV_IGNORED = ("TORCHINDUCTOR_CACHE_DIR",)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# signals whose disposition the job takes from the client (ignored there -> ignored in the job)
INHERITED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGALRM, signal.SIGCHLD)
PRELOAD = ("numpy", "torch", "timm", "pandas", "pyarrow", "pyarrow.parquet", "safetensors", "safetensors.torch")
REGISTRIES = ("dlbench.pretrain.base", "dlbench.adapt.base", "dlbench.data.registry")
_BOOT = ("import os, sys, json\n"
         "if os.fork(): os._exit(0)\n"  # the second fork: the server is no session leader, its parent is gone
         f"sys.path[:] = json.loads(os.environ.pop({_ENV_SYSPATH!r}))\n"
         "from dlbench.worker import serve\n"
         "serve(sys.argv[1])\n")


class WorkerUnavailable(Exception):
    """Setting up the worker failed before any job started: the caller runs the verb in-process."""


class _NotStarted(Exception):
    """The server went away before forking the job (e.g. it was exiting on its idle timeout)."""


# ---- key and paths -----------------------------------------------------------------------------

class Paths:
    """Where the server of one key listens and logs (``<dir>/<key>.sock``, ``.log``), and the start lock."""

    def __init__(self, dir: Path, key: str) -> None:
        self.dir, self.key = dir, key

    @property
    def sock(self) -> str:
        return str(self.dir / f"{self.key}.sock")

    @property
    def log(self) -> str:
        return str(self.dir / f"{self.key}.log")

    @property
    def lock(self) -> str:
        return str(self.dir / "start.lock")


def _sys_path() -> list[str]:
    """sys.path with relative entries ('' under ``python -c``) made absolute: the server runs elsewhere."""
    return [p if os.path.isabs(p) else os.path.abspath(p) for p in sys.path]


def _interpreter_flags() -> list[str]:
    """Command-line options reproducing this interpreter's flags (-O, -E, -X ...) for the server."""
    import subprocess

    flags: Callable[[], list[str]] | None = getattr(subprocess, "_args_from_interpreter_flags", None)
    return flags() if flags else []


def _package_files() -> Iterator[tuple[str, os.stat_result]]:
    import dlbench

    root = os.path.dirname(os.path.abspath(dlbench.__file__))
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".yaml", ".json")):
                path = os.path.join(here, name)
                yield os.path.relpath(path, root), os.stat(path)


def _version_file(module: str) -> str | None:
    """A library's version.py (found without importing it), or None if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    version = Path(spec.origin).with_name("version.py")
    path = version if version.is_file() else Path(spec.origin)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def key_inputs(env: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, Any]:
    """Everything in the key but the source files (the server logs it: why are there two servers?)."""
    return {"python": [sys.executable, sys.version, tuple(sys.flags), sys.warnoptions,
                       sorted((k, str(v)) for k, v in sys._xoptions.items())],
            "path": _sys_path(),
            "env": {k: v for k, v in sorted(env.items())
                    if (k.startswith(KEY_ENV_PREFIXES) or k in KEY_ENV_NAMES) and k not in KEY_ENV_IGNORED},
            "libs": {m: _version_file(m) for m in ("torch", "timm")}}


def server_key(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """What a server must agree on with its clients (module doc: Staleness)."""
    h = hashlib.sha256(json.dumps(key_inputs(env), sort_keys=True).encode())
    for rel, st in _package_files():
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def socket_dir() -> Path:
    """Per-user and node-local (the system temp dir, as tempfile.gettempdir finds it), or DLBENCH_WORKER_DIR."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    tmp = next((d for d in (os.environ.get(v) for v in ("TMPDIR", "TEMP", "TMP")) if d and os.path.isdir(d)), "/tmp")
    return Path(tmp) / f"dlbench-worker-{os.getuid()}"


def _checked_dir() -> Path:
    d = socket_dir()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        raise WorkerUnavailable(f"cannot create the socket directory {d}: {e}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not os.path.isdir(d):
        raise WorkerUnavailable(f"{d} is not a private directory of this user")
    if not os.access(d, os.W_OK | os.X_OK):
        raise WorkerUnavailable(f"{d} is not writable")
    return d


def paths() -> Paths:
    if not hasattr(socket, "AF_UNIX") or not hasattr(socket, "send_fds") or not hasattr(os, "fork"):
        raise WorkerUnavailable("no AF_UNIX sockets with fd passing or no fork() here")
    p = Paths(_checked_dir(), server_key())
    if len(os.fsencode(p.sock)) > 107:
        raise WorkerUnavailable(f"socket path too long for AF_UNIX: {p.sock}")
    return p


# ---- framing: one marker byte (carrying the fds), then JSON lines --------------------------------

def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def _read_line(sock: socket.socket, buf: bytearray) -> dict[str, Any] | None:
    """The next JSON line (None at EOF); bytes after it stay in ``buf``."""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def query(sock_path: str, op: str = "status") -> dict[str, Any]:
    """One ``status`` or ``stop`` request to the server at ``sock_path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REQUEST_TIMEOUT)
        s.connect(sock_path)
        s.sendall(b"\0")
        _send(s, {"op": op})
        return _read_line(s, bytearray()) or {}


# ---- client ------------------------------------------------------------------------------------

def run_via_worker(argv: list[str]) -> int | None:
    """Run ``dlbench <argv>`` in a child of the server; its exit code, or None to run it in-process."""
    received: list[int] = []  # signals forwarded so far
    buf = bytearray()  # what the server sent beyond the line read so far (a fast job's exit after the ack)
    sock: socket.socket | None = None
    try:
        p = paths()
        request = _request(argv)
        for attempt in range(2):
            sock = _connect_or_start(p)
            try:
                previous = _submit(sock, request, received, buf)
                break
            except _NotStarted as e:
                sock.close()
                sock = None
                buf.clear()
                if received:  # a forwarded signal for a job that never started: die of it here
                    _die_by(received[0])
                if attempt:
                    raise WorkerUnavailable(str(e)) from None
    except Exception as e:  # WorkerUnavailable, or anything else going wrong before the job started
        if sock is not None:
            sock.close()  # a server that did not start the job yet sees us gone and never will
        print(f"dlbench: worker unavailable ({e}); running in-process", file=sys.stderr, flush=True)
        return None
    assert sock is not None
    try:
        return _wait(sock, p, buf)
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _request(argv: list[str]) -> dict[str, Any]:
    umask = os.umask(0)
    os.umask(umask)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"op": "run", "argv": list(argv), "argv0": sys.argv[0] if sys.argv else "dlbench", "cwd": os.getcwd(),
            "env": dict(os.environ), "umask": umask, "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "affinity": affinity,
            "ignored": [s.name for s in INHERITED if signal.getsignal(s) == signal.SIG_IGN]}


def _connect(path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(START_TIMEOUT)
    try:
        s.connect(path)
        return s
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None
    except OSError as e:
        s.close()
        raise WorkerUnavailable(f"cannot connect to {path}: {e}") from None


@contextlib.contextmanager
def _start_lock(path: str, timeout: float) -> Iterator[None]:
    """One client at a time starts a server (the others then connect to it)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkerUnavailable("timed out waiting for another client starting the server") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _connect_or_start(p: Paths) -> socket.socket:
    sock = _connect(p.sock)
    if sock is not None:
        return sock
    try:
        lock = _start_lock(p.lock, START_TIMEOUT + 1)
        with lock:
            sock = _connect(p.sock)  # another client may have started it meanwhile
            if sock is None:
                _spawn_server(p)
                sock = _connect(p.sock)
    except OSError as e:
        raise WorkerUnavailable(f"cannot start the server: {e}") from None
    if sock is None:
        raise WorkerUnavailable(f"the server does not answer (log: {p.log})")
    return sock


def _spawn_server(p: Paths) -> None:
    """Start ``serve`` in a new session (it forks once more) and wait until it listens."""
    r, w = os.pipe()
    env = {**os.environ, _ENV_SYSPATH: json.dumps(_sys_path()), _ENV_READY_FD: str(w)}
    import subprocess

    try:
        with open(p.log, "ab") as log:
            proc = subprocess.Popen([sys.executable, *_interpreter_flags(), "-c", _BOOT, p.sock], env=env, cwd="/",
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=(w,), start_new_session=True)
        os.close(w)
        w = -1
        proc.wait()  # the first fork's parent exits at once
        ready, _, _ = select.select([r], [], [], START_TIMEOUT)
        if not ready:
            raise WorkerUnavailable(f"the server did not listen within {START_TIMEOUT:g}s (log: {p.log})")
        if os.read(r, 2) != b"ok":
            raise WorkerUnavailable(f"the server failed to start (log: {p.log})")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def _submit(sock: socket.socket, request: dict[str, Any], received: list[int], buf: bytearray) -> dict[int, Any]:
    """Send the request with fds 0-2 and wait until the server forked the job; signals are forwarded from
    the start (one arriving before the job exists makes the server drop the request, and us die of it).
    Returns the signal handlers to restore."""
    previous: dict[int, Any] = {}
    try:
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, _forwarder(sock, received))
        socket.send_fds(sock, [b"\0"], [0, 1, 2])
        _send(sock, request)
        sock.settimeout(ACK_TIMEOUT)
        ack = _read_line(sock, buf)
        if not ack or "pid" not in ack:
            raise _NotStarted("the server closed the connection before starting the job")
    except BaseException as e:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if isinstance(e, OSError) and e.errno == errno.EBADF:
            raise WorkerUnavailable("one of stdin/stdout/stderr is closed") from None
        if isinstance(e, TimeoutError):
            raise WorkerUnavailable(f"the server did not start the job within {ACK_TIMEOUT:g}s") from None
        if isinstance(e, OSError):
            raise _NotStarted(f"the server did not start the job: {e}") from None
        raise
    sock.settimeout(None)
    return previous


def _forwarder(sock: socket.socket, received: list[int]) -> Callable[[int, Any], None]:
    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        with contextlib.suppress(OSError):
            _send(sock, {"signal": signum})
    return forward


def _wait(sock: socket.socket, p: Paths, buf: bytearray) -> int:
    while True:
        try:
            msg = _read_line(sock, buf)
        except OSError:
            msg = None
        if msg is None:
            print(f"dlbench: worker: lost the connection to the server (log: {p.log})", file=sys.stderr, flush=True)
            return 1
        if "exit" in msg:
            return int(msg["exit"])
        if "signal" in msg:
            _die_by(int(msg["signal"]))


def _die_by(signum: int) -> NoReturn:
    """Exit as the job did: killed by ``signum`` (so a shell or Snakemake sees the same status)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(0.1)
    os._exit(128 + signum)


# ---- server ------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def _cli_modules() -> list[str]:
    """The dlbench modules the CLI's verbs import (read from cli.py, so a new verb is preloaded too)."""
    import ast

    import dlbench.cli

    tree = ast.parse(Path(dlbench.cli.__file__).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]
    return list(dict.fromkeys(m for m in names if m.startswith("dlbench.")))


def preload() -> list[str]:
    """Import what jobs need; never run a torch op (no OpenMP pool before fork). Returns the failures."""
    import importlib

    failed = []
    for name in (*PRELOAD, *_cli_modules()):
        try:
            importlib.import_module(name)
        except Exception as e:  # the child imports it again and reports the error in its job
            failed.append(f"{name}: {e!r}")
    for name in REGISTRIES:
        try:
            importlib.import_module(name).load_all()
        except Exception as e:
            failed.append(f"{name}.load_all(): {e!r}")
    return failed


class _Job:
    def __init__(self, pid: int, conn: socket.socket | None, argv: list[str]) -> None:
        self.pid, self.conn, self.argv, self.started = pid, conn, argv, time.monotonic()


def _bind(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        os.unlink(path)  # a dead server's socket: the client that started us found nobody answering
        s.bind(path)
    s.listen(128)
    s.setblocking(False)
    return s


class _Server:
    def __init__(self, listener: socket.socket, path: str, idle: float) -> None:
        import selectors

        self.listener, self.path, self.idle = listener, path, idle
        self.inode = os.stat(path).st_ino
        self.jobs: dict[int, _Job] = {}
        self.buffers: dict[int, bytearray] = {}
        self.last_active = time.monotonic()
        self.stopping = False
        self.stop_requested = False  # set by a signal handler, acted on by the loop
        self.kill_at = 0.0
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._drain)

    def loop(self) -> None:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in FORWARDED:
            signal.signal(sig, self._request_stop)
        while True:
            if self.stop_requested:
                self._stop()
            self._reap()
            if not self.jobs:
                if self.stopping:
                    break
                timeout: float | None = self.idle - (time.monotonic() - self.last_active)
                if timeout <= 0:
                    _log(f"idle for {self.idle:g}s: exiting")
                    break
            else:
                timeout = 1.0 if self.stopping else None
                if self.stopping and time.monotonic() > self.kill_at:
                    for pid in self.jobs:
                        _kill(pid, signal.SIGKILL)
            for key, _ in self.sel.select(timeout):
                try:
                    key.data(key.fileobj)
                except Exception as e:  # one bad connection must not take the running jobs down
                    _log(f"error handling {key.fileobj}: {e!r}")
        self._unlisten()

    def _unlisten(self) -> None:
        """Stop taking jobs: remove our socket (not a successor's), close the listener."""
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        if self.listener.fileno() >= 0:
            self.sel.unregister(self.listener)
            self.listener.close()

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _stop(self) -> None:
        """Take no more jobs; SIGTERM the running ones (SIGKILL after 10 s); exit when they are reaped."""
        if not self.stopping:
            self.stopping, self.kill_at = True, time.monotonic() + 10
            self._unlisten()
            for pid in self.jobs:
                _kill(pid, signal.SIGTERM)

    def _drain(self, sock: socket.socket) -> None:
        """A signal arrived (SIGCHLD, mostly): reap now, before other events of this batch are handled."""
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096):
                pass
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is None:
                continue
            self.last_active = time.monotonic()
            if os.WIFSIGNALED(status):
                result, what = {"signal": os.WTERMSIG(status)}, f"killed by signal {os.WTERMSIG(status)}"
            else:
                result, what = {"exit": os.waitstatus_to_exitcode(status)}, f"exit {os.waitstatus_to_exitcode(status)}"
            _log(f"job {pid} {what} after {time.monotonic() - job.started:.1f}s: {' '.join(job.argv[:3])}")
            if job.conn is not None:
                with contextlib.suppress(OSError):
                    _send(job.conn, result)
                self._close(job.conn)

    def _close(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        self.buffers.pop(id(conn), None)
        conn.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # nothing pending after all, or the listener closed in this batch
            return
        fds: list[int] = []
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            marker, fds, flags, _ = socket.recv_fds(conn, 1, 3)
            if marker != b"\0" or flags & getattr(socket, "MSG_CTRUNC", 0):
                raise ValueError("bad request header")
            buf = bytearray()
            request = _read_line(conn, buf)
            if request is None:
                raise ValueError("connection closed before the request")
            op = request.get("op")
            if op == "status":
                self._reap()
                _send(conn, {"pid": os.getpid(), "jobs": sorted(self.jobs), "threads": _threads(),
                             "path": self.path, "idle": self.idle})
            elif op == "stop":
                _send(conn, {"pid": os.getpid(), "stopping": True})
                self._stop()
            elif op == "run" and len(fds) == 3 and not self.stopping and not _gone(conn):
                self._start(conn, request, fds, buf)
                return
        except (OSError, ValueError) as e:
            _log(f"bad request: {e!r}")
        for fd in fds:
            os.close(fd)
        conn.close()

    def _start(self, conn: socket.socket, request: dict[str, Any], fds: list[int], buf: bytearray) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # a forwarded signal must not reach the child before it drops the server's handlers (they would swallow it)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                _child(request, fds, self, conn, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # the child does it too: whichever runs first
        for fd in fds:
            os.close(fd)
        import selectors

        self.jobs[pid] = _Job(pid, conn, request["argv"])
        self.last_active = time.monotonic()
        self.buffers[id(conn)] = buf
        conn.settimeout(None)
        self.sel.register(conn, selectors.EVENT_READ, lambda c: self._from_client(pid, c))
        _log(f"job {pid}: {' '.join(request['argv'][:3])} in {request['cwd']}")
        try:
            _send(conn, {"pid": pid})
        except OSError:
            self._client_gone(pid, conn)
            return
        if buf:  # a signal sent right behind the request
            self._handle_lines(pid, buf)

    def _from_client(self, pid: int, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._client_gone(pid, conn)
            return
        buf = self.buffers.setdefault(id(conn), bytearray())
        buf += data
        self._handle_lines(pid, buf)

    def _handle_lines(self, pid: int, buf: bytearray) -> None:
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            with contextlib.suppress(ValueError, KeyError, TypeError):
                sig = int(json.loads(line)["signal"])
                if sig in FORWARDED and pid in self.jobs:
                    _kill(pid, sig)

    def _client_gone(self, pid: int, conn: socket.socket) -> None:
        """The client died (SIGKILL): kill its job now, so a rerun does not race it."""
        if pid in self.jobs:
            _log(f"job {pid}: client gone, SIGKILL")
            _kill(pid, signal.SIGKILL)
            self.jobs[pid].conn = None
        self._close(conn)

    def close_in_child(self, conn: socket.socket) -> None:
        """In a forked job: drop the server's descriptors (never unregister: the epoll set is shared)."""
        conn.close()
        for job in self.jobs.values():
            if job.conn is not None:
                job.conn.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()
        with contextlib.suppress(OSError):
            self.sel.close()


def _gone(conn: socket.socket) -> bool:
    """True when the client already hung up (it gave up waiting for a busy server)."""
    ready, _, _ = select.select([conn], [], [], 0)
    if not ready:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _kill(pid: int, sig: int) -> None:
    """Signal the job's process group (its subprocesses too), or the job alone if it has none yet."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    except PermissionError:
        pass


def serve(sock_path: str) -> None:
    """The server's main (started by a client, see _BOOT): listen, preload, serve until idle."""
    idle = float(os.environ.get(ENV_IDLE) or DEFAULT_IDLE)
    ready = os.environ.pop(_ENV_READY_FD, None)
    listener = _bind(sock_path)
    if ready:
        os.write(int(ready), b"ok")
        os.close(int(ready))
    _log(f"listening on {sock_path} (idle timeout {idle:g}s)")
    _log(f"key inputs: {json.dumps(key_inputs())}")
    if os.environ.get(ENV_PRELOAD, "1") != "0":
        t0 = time.monotonic()
        failed = preload()
        _log(f"preloaded in {time.monotonic() - t0:.1f}s, {_threads()} threads (BLAS, jemalloc; no torch pool)")
        for f in failed:
            _log(f"preload failed: {f}")
    import gc

    gc.freeze()  # preloaded objects are never scanned by a child's collector: fewer copied pages
    server = _Server(listener, sock_path, idle)
    try:
        server.loop()
    finally:
        server._unlisten()


# ---- child (one job) ---------------------------------------------------------------------------

def _child(request: dict[str, Any], fds: list[int], server: _Server, conn: socket.socket,
           mask: set[signal.Signals]) -> NoReturn:
    code = 1
    try:
        parent = os.getppid()
        os.setpgid(0, 0)
        _die_with(parent)
        signal.set_wakeup_fd(-1)
        server.close_in_child(conn)
        ignored = set(request.get("ignored", ()))
        for sig in INHERITED:
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, signal.SIG_IGN if sig.name in ignored else default)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM forwarded meanwhile arrives now
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        _match_scheduling(request)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv0"], *request["argv"]]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # re-read TMPDIR
        import importlib

        importlib.invalidate_caches()
        code = _run_job(request["argv"])
    except BaseException:
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    """PR_SET_PDEATHSIG: the job is SIGKILLed if the server dies (its client would wait forever)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _match_scheduling(request: dict[str, Any]) -> None:
    """The client's niceness and CPU affinity (``nice``/``taskset`` on the job keep working)."""
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) != request["nice"]:
            os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
    if request.get("affinity"):
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, request["affinity"])


def _run_job(argv: list[str]) -> int:
    """``dlbench <argv>`` as ``sys.exit(main())`` would end it, then the usage line (module doc)."""
    import atexit
    import resource
    import threading

    import weakref

    t0 = time.monotonic()
    inherited = list(weakref.finalize._registry)  # type: ignore[attr-defined]
    code, interrupted = 1, False
    try:
        from dlbench.cli import run_in_process

        code = run_in_process(argv)
    except SystemExit as e:
        code = _exit_code(e)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    for t in threading.enumerate():  # what interpreter shutdown does before exiting
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    for f in inherited:  # the preload's finalizers only free what dies with this process anyway
        f.detach()
    atexit._run_exitfuncs()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    torch = sys.modules.get("torch")
    threads = f" threads {torch.get_num_threads()}" if torch is not None else ""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    print(f"dlbench worker: job cpu {cpu:.1f}s wall {time.monotonic() - t0:.1f}s{threads}", file=sys.stderr,
          flush=True)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 128 + signal.SIGINT
    return int(code or 0)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


# ---- Snakemake hook and command line -------------------------------------------------------------

def enable_for_local_jobs(workflow: Any) -> None:
    """The Snakefile's ``onstart``: jobs the local executor runs use the worker (unless DLBENCH_WORKER is
    set). Not under a cluster executor: its jobs run one per allocation (nothing to share), and the
    variable would reach them with the submission environment; not inside a remote job step either."""
    if getattr(workflow, "local_exec", False) and not getattr(workflow, "remote_exec", True) \
            and not getattr(workflow, "touch", False):
        os.environ.setdefault(ENV_WORKER, "auto")


def main(argv: list[str] | None = None) -> int:
    """``python -m dlbench.worker status|stop``: the servers in this user's socket directory."""
    args = sys.argv[1:] if argv is None else argv
    op = args[0] if args else "status"
    if op not in ("status", "stop"):
        print("usage: python -m dlbench.worker [status|stop]", file=sys.stderr)
        return 2
    for sock in sorted(socket_dir().glob("*.sock")):
        try:
            print(sock, json.dumps(query(str(sock), op)))
        except OSError as e:
            print(sock, f"not answering: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
