"""Fault injection: a training process killed mid-epoch loses no completed epoch."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from rws import results

ARGS = ["--data", "ocr_letters", "--model", "sbn:20", "-K", "2", "--batch-size", "10",
        "--epochs", "3", "--valid-k", "2", "--test-k", "2", "--no-progress", "--threads", "1"]


def start(out):
    return subprocess.Popen([sys.executable, "-m", "rws", "train", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def epochs_done(out):
    try:
        return json.loads((out / "record.json").read_text())["epochs_done"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_sigkill_mid_epoch_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    deadline = time.time() + 120
    while epochs_done(out) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)                                # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

    record = json.loads((out / "record.json").read_text())     # whole, valid JSON
    state = results.load_checkpoint(out / "checkpoint.pt")        # whole, loadable
    done = record["epochs_done"]
    assert done >= 1 and state["epoch"] == done
    before = record["epochs"][:done]
    assert not list(out.glob(".*.tmp"))                          # no temporary left to confuse
    assert (out / ".lock").exists()               # the killed run's lock file: stale, ignored

    p = subprocess.run([sys.executable, "-m", "rws", "train", *ARGS, "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resuming {out} after epoch {done}" in p.stdout
    final = json.loads((out / "record.json").read_text())
    assert final["status"] == "finished"
    assert [e["epoch"] for e in final["epochs"]] == [1, 2, 3]
    assert final["epochs"][:done] == before                        # nothing completed was lost
    assert all(torch.isfinite(v).all() for v in
               results.load_checkpoint(out / "checkpoint.pt")["model"].values())


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    try:
        deadline = time.time() + 120
        while not (out / ".lock-owner").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "rws", "train", *ARGS, "--out", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert proc.poll() is None, "the first run ended before the second one started"
        assert second.returncode == 2
        assert f"rws: error: {out} is in use by process {proc.pid} on " in second.stderr
        assert "wait for it to finish" in second.stderr and len(second.stderr.splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()
