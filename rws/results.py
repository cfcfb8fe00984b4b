"""Result records and checkpoints, always written atomically.

A record is one JSON file per run (``record.json``): the full config, the seed, the
environment (Python, torch, the project's git commit, device, threads) of the process
that wrote it, ``sessions`` (each process that trained the run: the epoch it started
from and its commit, so a run resumed under newer code says so), per-epoch metrics and
the final test log-likelihood. Every number in a table or figure of the
suite comes from one. A checkpoint (``checkpoint.pt``) holds only tensors and plain
data and is loaded with ``torch.load(weights_only=True)``, so a file from elsewhere
cannot run code.
"""
from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import rws
from rws import cpu
from rws.errors import UserError

RECORD_SCHEMA = 1


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write to {path.parent} ({e.strerror}); choose a writable "
                        "output directory with --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_writable_dir(path: Path) -> None:
    """Fail before any work is done if ``path`` cannot hold the run's files."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"output directory {path} is not writable ({e.strerror}); "
                        "choose another with --out") from None


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it may be truncated") from None


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location="cpu", required=("config", "model")) -> dict:
    """Load with weights_only=True; a truncated, corrupt or code-carrying file is refused."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be loaded safely ({first[:200]}); it is "
                        "truncated, corrupt or holds more than tensors and plain data") from None
    if not isinstance(state, dict) or not all(k in state for k in required):
        raise UserError(f"checkpoint {path} is not an rws-bench checkpoint (no {'/'.join(required)})")
    return state


LOCK = ".lock"            # held (flock) by the process training into a run directory
OWNER = ".lock-owner"     # which process that is, for the message of the next one


def lock_run_dir(path: Path, name: str = LOCK, what: str | None = None,
                 fix: str = "wait for it to finish, or stop it, or use another --out"):
    """Hold the run directory ``path`` for this process: a second process that tries gets
    one line naming the holder. The lock is the operating system's (``filelock``, an
    flock), so it goes with its process: a run killed by a signal or a power cut leaves
    nothing that blocks its resume. Returns the lock; ``release()`` it when done.
    ``name`` holds one job in the directory instead (an evaluation, say: ``what``)."""
    from filelock import FileLock, Timeout
    path = Path(path)
    lock = FileLock(str(path / name), timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{what or path} is in use by {lock_holder(path, name) or 'another process'}; "
                        f"{fix}") from None
    (path / (name + OWNER[len(LOCK):])).write_text(
        f"process {os.getpid()} on {platform.node()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return lock


def lock_holder(path: Path, name: str = LOCK) -> str | None:
    """Who holds the run directory ``path`` (or its job ``name``) now (None: nobody, or a
    stale lock file)."""
    from filelock import FileLock, Timeout
    path = Path(path)
    if not (path / name).exists():
        return None
    probe = FileLock(str(path / name), timeout=0, is_singleton=False)
    try:
        probe.acquire()
    except Timeout:
        try:
            return (path / (name + OWNER[len(LOCK):])).read_text().strip()
        except OSError:
            return "another process"
    probe.release()
    return None


def git_commit(here: str | Path | None = None) -> str | None:
    """The commit of the source tree the package runs from (``here``: a directory in it),
    if it is a git checkout; "+dirty" when a tracked file outside ``results/`` differs
    from it (the records that running sweeps rewrite there are not source)."""
    here = Path(here) if here is not None else Path(rws.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)results"],
                               cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: str | torch.device = "cpu") -> dict:
    device = torch.device(device)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rws_bench": rws.__version__,
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu.model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env
