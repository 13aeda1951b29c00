"""dlbench.worker: the fork server behind ``DLBENCH_WORKER=1`` (no Snakemake). Every test uses its own socket
directory (DLBENCH_WORKER_DIR) and stops its servers at the end. Most share one preloading server; the
start-up, idle, staleness and race tests use servers that preload nothing (DLBENCH_WORKER_PRELOAD=0)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dlbench.worker import query

DLBENCH = str(Path(sys.executable).with_name("dlbench"))
SRC = Path(__file__).resolve().parents[2] / "src"
TIMING_KEYS = ("seconds", "images_per_s")

# `dlbench data fetch` runs `python -m dvc`: this stand-in records its cwd-relative call and one env var
FAKE_DVC = """import json, os, sys
with open("dvc-calls.jsonl", "a") as f:
    f.write(json.dumps({"args": sys.argv[1:], "mark": os.environ.get("DLBENCH_TEST_MARK")}) + "\\n")
if sys.argv[1] == "status":
    print("{}")
"""


def socket_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dlw-", dir="/tmp"))  # short: AF_UNIX paths have 107 bytes


def worker_env(sock_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLBENCH_WORKER")}
    return {**env, "DLBENCH_WORKER": "1", "DLBENCH_WORKER_DIR": str(sock_dir), "DLBENCH_WORKER_IDLE": "300", **extra}


def servers(sock_dir: Path) -> dict[str, int]:
    """socket file name -> server pid, for every server answering in ``sock_dir``."""
    out = {}
    for sock in sorted(sock_dir.glob("*.sock")):
        try:
            out[sock.name] = query(str(sock))["pid"]
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(cond, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def stop_servers(sock_dir: Path) -> None:
    pids = []
    for sock in sock_dir.glob("*.sock"):
        try:
            pids.append(query(str(sock), "stop")["pid"])
        except OSError:
            continue
    assert wait_until(lambda: not any(alive(p) for p in pids), 20), "a server did not stop"
    shutil.rmtree(sock_dir, ignore_errors=True)


def run(args: list[str], env: dict[str, str], cwd: Path, name: str = "job") -> tuple[int, str, str]:
    """``dlbench args`` with stdout/stderr redirected to files in ``cwd`` (as a Snakemake job's log)."""
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    with open(out, "w") as o, open(err, "w") as e:
        rc = subprocess.run([DLBENCH, *args], env=env, cwd=cwd, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                            timeout=300).returncode
    return rc, out.read_text(), err.read_text()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One preloading server for the module (its env puts the stand-in dvc first on sys.path); digits built."""
    root = tmp_path_factory.mktemp("worker")
    (root / "fake" / "dvc").mkdir(parents=True)
    (root / "fake" / "dvc" / "__init__.py").write_text("")
    (root / "fake" / "dvc" / "__main__.py").write_text(FAKE_DVC)
    sock_dir = socket_dir()
    path = os.pathsep.join(filter(None, [str(root / "fake"), os.environ.get("PYTHONPATH")]))
    env = worker_env(sock_dir, PYTHONPATH=path)
    rc, out, err = run(["data", "build", "digits", "--data-root", str(root / "data")], env, root, "build")
    assert rc == 0 and "built dataset digits" in out, err
    assert "worker unavailable" not in err and "dlbench worker: job cpu" in err, err
    yield {"root": root, "env": env, "dir": sock_dir, "data": root / "data"}
    stop_servers(sock_dir)


def recipe(root: Path, epochs: int) -> str:
    """The smoke config's digits recipe, shortened to ``epochs``: a tiny deterministic training job."""
    r = {"backbone": "tiny", "dataset": "digits", "id": "digits/tiny/none/supervised/none/none/seed0",
         "kind": "supervised", "knobs": {"epochs": epochs, "lr": 0.003, "weight_decay": 0.05}, "seed": 0,
         "backbone_spec": {"cifar_stem": True, "model": "resnet18", "source": "timm", "stem_stride": 2,
                           "kwargs": {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1], "stem_width": 8}},
         "params": {"augment": {"crop_scale": [0.7, 1.0], "flip": True}, "label_smoothing": 0.0,
                    "train": {"batch_size": 100, "checkpoint_min_seconds": 0, "epochs": epochs, "lr": 0.003,
                              "optimizer": "adamw", "warmup_epochs": 0, "weight_decay": 0.05}},
         "train_split": "train", "val_split": "val"}
    path = root / f"recipe{epochs}.json"
    path.write_text(json.dumps(r, sort_keys=True))
    return f"@{path}"


def train_args(shared, out: Path, epochs: int, threads: int) -> list[str]:
    return ["train", "supervised", "--recipe", recipe(shared["root"], epochs), "--out", str(out),
            "--checkpoint", str(out) + ".pt", "--threads", str(threads), "--device", "cpu",
            "--data-root", str(shared["data"])]


def test_exit_codes_and_redirected_output(shared, tmp_path):
    env = shared["env"]
    rc, out, err = run(["data", "list"], env, tmp_path)
    assert rc == 0 and "digits" in out and "scikit-learn" in out, err
    (tmp_path / "bad.yaml").write_text("no_such_key: 1\n")
    rc, out, err = run(["config", "check", "bad.yaml"], env, tmp_path)  # relative: the job's cwd
    assert rc == 2 and "dlbench: error: unknown config key no_such_key" in err, err
    rc, out, err = run(["train", "supervised", "--recipe", "@missing.json", "--out", "m"], env, tmp_path)
    assert rc == 1 and "Traceback" in err and "FileNotFoundError" in err, err
    rc, out, err = run(["train", "supervised", "--recipe", "not json", "--out", "m"], env, tmp_path)
    assert rc == 1 and "--recipe: not valid JSON" in err, err
    rc, out, err = run(["train"], env, tmp_path)  # argparse's usage error
    assert rc == 2 and "usage: dlbench train" in err, err
    rc, out, err = run(["--help"], env, tmp_path)
    assert rc == 0 and out.startswith("usage: dlbench"), err
    assert "worker unavailable" not in err and len(servers(shared["dir"])) == 1


def test_cwd_and_environment_reach_the_job_and_its_subprocesses(shared, tmp_path):
    env = {**shared["env"], "DLBENCH_TEST_MARK": "mark-42"}
    rc, out, err = run(["data", "fetch", "digits"], env, tmp_path)
    assert rc == 0 and "dataset digits: pulled from the DVC remote" in out, err
    calls = [json.loads(line) for line in (tmp_path / "dvc-calls.jsonl").read_text().splitlines()]
    assert [c["args"][0] for c in calls] == ["status", "pull"] and {c["mark"] for c in calls} == {"mark-42"}


def test_second_call_reuses_the_server_and_starts_fast(shared, tmp_path):
    env = shared["env"]
    before = servers(shared["dir"])
    times = []
    for i in range(3):
        t0 = time.monotonic()
        rc, out, err = run(["data", "list"], env, tmp_path, f"list{i}")
        times.append(time.monotonic() - t0)
        assert rc == 0 and "digits" in out, err
    assert servers(shared["dir"]) == before and len(before) == 1
    assert min(times) < 1.0, times  # in-process this job imports for seconds; here it forks


def test_concurrent_clients(shared, tmp_path):
    env = shared["env"]
    procs = []
    for i in range(4):
        d = tmp_path / f"c{i}"
        d.mkdir()
        (d / "bad.yaml").write_text(f"no_such_key_{i}: 1\n")
        procs.append(subprocess.Popen([DLBENCH, "config", "check", "bad.yaml"], env=env, cwd=d, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and f"unknown config key no_such_key_{i}" in err, err


def test_same_outputs_as_in_process_and_threads_are_set_per_job(shared, tmp_path):
    env = shared["env"]
    plain = {k: v for k, v in env.items() if k != "DLBENCH_WORKER"}
    rc, out_here, err = run(train_args(shared, tmp_path / "here", 1, 1), plain, tmp_path, "here")
    assert rc == 0 and "dlbench worker" not in err, err
    rc, out_worker, err = run(train_args(shared, tmp_path / "worker", 1, 1), env, tmp_path, "worker")
    assert rc == 0 and "worker unavailable" not in err, err
    assert "threads 1" in err.splitlines()[-1], err  # torch.get_num_threads() in the job
    assert (tmp_path / "here/model.safetensors").read_bytes() == (tmp_path / "worker/model.safetensors").read_bytes()
    histories = [[{k: v for k, v in e.items() if k not in TIMING_KEYS}
                  for e in json.loads((tmp_path / d / "history.json").read_text())] for d in ("here", "worker")]
    assert histories[0] == histories[1]
    assert out_here.split(" in ")[0] == out_worker.split(" in ")[0]  # "trained <id> in <seconds>"
    rc, _, err = run(train_args(shared, tmp_path / "two", 1, 2), env, tmp_path, "two")
    assert rc == 0 and "threads 2" in err.splitlines()[-1], err


def test_forked_child_of_preloaded_server_sets_threads_and_runs_ops():
    """Preloading starts no torch thread pool: a forked child may set both thread counts and compute."""
    code = ("import os, sys, torch\n"
            "from dlbench.worker import preload\n"
            "failed = preload()\n"
            "assert not failed, failed\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    ok = False\n"
            "    try:\n"
            "        torch.set_num_interop_threads(1)\n"
            "        torch.set_num_threads(2)\n"
            "        x = torch.ones(512, 512) @ torch.ones(512, 512)\n"
            "        ok = torch.get_num_threads() == 2 and float(x[0, 0]) == 512.0\n"
            "    finally:\n"
            "        os._exit(0 if ok else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr


def test_sigkill_of_the_client_kills_the_job_at_once(shared, tmp_path):
    env = shared["env"]
    out = tmp_path / "long"
    client = subprocess.Popen([DLBENCH, *train_args(shared, out, 500, 1)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (sock,) = shared["dir"].glob("*.sock")
    assert wait_until(lambda: query(str(sock))["jobs"], 60), "the job never started"
    (job,) = query(str(sock))["jobs"]
    assert wait_until(lambda: Path(str(out) + ".pt").exists(), 120), "the job never wrote a checkpoint"
    rc, listed, err = run(["data", "list"], env, tmp_path)  # a second job runs beside it
    assert rc == 0 and "digits" in listed, err
    client.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    assert wait_until(lambda: not alive(job), 1.0), "the job outlived its client by more than a second"
    assert time.monotonic() - t0 < 1.0
    client.wait(timeout=10)
    assert wait_until(lambda: query(str(sock))["jobs"] == [], 5), "the server did not reap the job"
    assert not (out / "model.safetensors").exists()


def test_sigterm_is_forwarded_and_the_client_dies_of_it(shared, tmp_path):
    env = shared["env"]
    client = subprocess.Popen([DLBENCH, *train_args(shared, tmp_path / "term", 500, 1)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (sock,) = shared["dir"].glob("*.sock")
    assert wait_until(lambda: query(str(sock))["jobs"], 60), "the job never started"
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=20) == -signal.SIGTERM
    assert wait_until(lambda: query(str(sock))["jobs"] == [], 5)


def test_racing_clients_start_one_server_which_exits_when_idle(tmp_path):
    sock_dir = socket_dir()
    try:
        env = worker_env(sock_dir, DLBENCH_WORKER_PRELOAD="0", DLBENCH_WORKER_IDLE="2")
        procs = [subprocess.Popen([DLBENCH, "data", "list"], env=env, cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and "digits" in out and "worker unavailable" not in err, err
        (log,) = sock_dir.glob("*.log")
        started = [line for line in log.read_text().splitlines() if "listening on" in line]
        assert len(started) == 1, log.read_text()  # the start lock: one client started it, the others waited
        pid = int(started[0].split("[")[1].split("]")[0])
        assert wait_until(lambda: not alive(pid), 30), "the idle server did not exit"
        assert list(sock_dir.glob("*.sock")) == []
    finally:
        stop_servers(sock_dir)


def test_a_source_change_starts_a_new_server(tmp_path):
    shutil.copytree(SRC / "dlbench", tmp_path / "src" / "dlbench", ignore=shutil.ignore_patterns("__pycache__"))
    sock_dir = socket_dir()
    try:
        env = worker_env(sock_dir, DLBENCH_WORKER_PRELOAD="0", PYTHONPATH=str(tmp_path / "src"))
        rc, out, err = run(["data", "list"], env, tmp_path, "first")
        assert rc == 0 and "digits" in out, err
        first = servers(sock_dir)
        with open(tmp_path / "src/dlbench/data/registry.py", "a") as f:
            f.write("\nprint('edited registry')\n")
        rc, out, err = run(["data", "list"], env, tmp_path, "second")
        assert rc == 0 and "edited registry" in out, err
        both = servers(sock_dir)
        assert len(first) == 1 and len(both) == 2 and set(first.items()) < set(both.items())
    finally:
        stop_servers(sock_dir)


def test_unusable_socket_dir_falls_back_to_in_process(tmp_path):
    (tmp_path / "file").write_text("")
    shared_dir = tmp_path / "open"
    shared_dir.mkdir()
    shared_dir.chmod(0o777)  # others could plant a socket there
    for sock_dir in (tmp_path / "file" / "sub", shared_dir):
        rc, out, err = run(["data", "list"], worker_env(sock_dir), tmp_path)
        assert rc == 0 and "digits" in out, err
        assert err.count("dlbench: worker unavailable") == 1 and "running in-process" in err, err
        assert "dlbench worker: job cpu" not in err


def test_unset_or_zero_runs_in_process(tmp_path):
    sock_dir = socket_dir()
    try:
        rc, out, err = run(["data", "list"], worker_env(sock_dir, DLBENCH_WORKER="0"), tmp_path)
        assert rc == 0 and "digits" in out and err == "", err
        assert list(sock_dir.iterdir()) == []
    finally:
        stop_servers(sock_dir)
