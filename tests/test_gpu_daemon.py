"""benchmarks/gpu_daemon.sh: a GPU job that outlives one device call. ``wait`` must return at once on a fresh
machine (the lease went back and the daemon with it), report a job still running, and collect a finished one."""

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "benchmarks/gpu_daemon.sh")


def daemon(*args, out=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_wait_on_a_fresh_machine_returns_at_once(tmp_path):
    t0 = time.perf_counter()
    r = daemon("wait", str(tmp_path / "job"), "300")
    assert r.returncode == 3 and "fresh machine" in r.stdout
    assert time.perf_counter() - t0 < 10


def test_start_then_wait_reports_running_then_collects(tmp_path):
    job, out = tmp_path / "job", tmp_path / "out"
    r = daemon("start", str(job), "--", "bash", "-c", "echo first; sleep 4; echo last; exit 7")
    assert r.returncode == 0 and "started" in r.stdout
    running = daemon("wait", str(job), "1")
    assert running.returncode == 4 and "still running" in running.stdout
    done = daemon("wait", str(job), "30", out=out)
    assert done.returncode == 0 and "ended, rc 7" in done.stdout
    assert (out / "log").read_text().split() == ["first", "last"] and (out / "rc").read_text().strip() == "7"


def test_bad_usage_names_the_allowed_commands(tmp_path):
    r = daemon("stop", str(tmp_path))
    assert r.returncode == 2 and "allowed: start, wait" in r.stdout
    assert daemon("start", str(tmp_path / "job"), "--").returncode == 2
