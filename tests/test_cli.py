"""The command line: the main job end to end, and one clear line for every bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rws.cli import EvalProgressLines


def rws(*args, check=None):
    p = subprocess.run([sys.executable, "-m", "rws", *map(str, args)], capture_output=True,
                       text=True, timeout=300)
    if check is not None:
        assert p.returncode == check, p.stderr
    return p


TINY = ["--data", "dna", "--model", "sbn:10", "-K", "2", "--epochs", "1", "--valid-k", "5",
        "--test-k", "5", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    p = rws("train", *TINY, "--out", out, check=0)
    assert "test log-likelihood (K=5)" in p.stdout
    return out


def test_train_writes_checkpoint_and_record(run_dir):
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "finished" and record["config"]["K"] == 2
    assert (run_dir / "checkpoint.pt").exists()


def test_eval_prints_log_likelihood_with_standard_error(run_dir, tmp_path):
    p = rws("eval", run_dir / "checkpoint.pt", "-K", "50", "--no-progress",
            "--json", tmp_path / "e.json", check=0)
    assert "log p^_K(x) = " in p.stdout and "K=50" in p.stdout and "+-" in p.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["K"] == 50 and len(result["per_point"]) == 1186   # every dna test point


def test_an_exported_model_evaluates_as_its_run_does(run_dir, tmp_path):
    rws("export", run_dir / "checkpoint.pt", "--out", tmp_path / "m.pt", check=0)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(state) == {"config", "model", "epoch"}          # no optimiser, no history
    outs = []
    for name, path in (("run", run_dir / "checkpoint.pt"), ("model", tmp_path / "m.pt")):
        rws("eval", path, "-K", "20", "--no-progress", "--json", tmp_path / f"{name}.json",
            check=0)
        outs.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert outs[0]["ll"] == outs[1]["ll"] and outs[0]["epoch"] == outs[1]["epoch"]


def test_protocol_ref_trains_and_records_its_knobs(tmp_path):
    rws("train", *TINY, "--protocol", "ref", "--lr-s", "2e-3", "--out", tmp_path, check=0)
    cfg = json.loads((tmp_path / "record.json").read_text())["config"]
    assert (cfg["protocol"], cfg["optimizer"], cfg["sleep_interleave"], cfg["lr_s"]) == \
        ("ref", "ema_momentum", 2, 2e-3)


def test_a_sleep_rate_of_its_own_needs_its_own_update(tmp_path):
    bad(["train", *TINY, "--lr-s", "1e-4", "--out", tmp_path], "--sleep-interleave")


def test_datasets_lists_every_set():
    out = rws("datasets", check=0).stdout
    assert "binarized_mnist" in out and "784" in out and "rcv1" in out


def bad(args, message, code=2):
    p = rws(*args)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 3      # one line (argparse adds usage)


def test_unknown_data_set(tmp_path):
    bad(["train", "--data", "mnist", "--out", tmp_path], "unknown data set 'mnist'")


def test_unknown_model_spec(tmp_path):
    bad(["train", "--data", "dna", "--model", "sbn200", "--out", tmp_path],
        "cannot parse model spec 'sbn200'")


def test_unknown_layer_family(tmp_path):
    bad(["train", "--data", "dna", "--model", "rbm:200", "--out", tmp_path],
        "unknown layer family 'rbm'")


def test_unknown_method(tmp_path):
    bad(["train", "--data", "dna", "--method", "vi", "--out", tmp_path], "unknown method 'vi'")


def test_unknown_grad_precision(tmp_path):
    bad(["train", "--data", "dna", "--grad-precision", "fp16", "--out", tmp_path],
        "unknown grad precision 'fp16'; choose one of: float32, bfloat16")


@pytest.mark.parametrize("K", ["0", "-3"])
def test_nonpositive_K(tmp_path, K):
    bad(["train", "-K", K, "--out", tmp_path], "must be >= 1")


def test_batch_larger_than_data(tmp_path):
    bad(["train", "--data", "dna", "--batch-size", "5000", "--out", tmp_path],
        "batch size 5000 is larger than the 1400")


def test_non_binary_data_file(tmp_path):
    path = tmp_path / "grey.npz"
    grey = np.full((4, 5), 0.5)
    np.savez(path, train=grey, valid=grey, test=grey)
    bad(["train", "--data", path, "--out", tmp_path / "o"], "not exactly 0 or 1")


def test_empty_training_split(tmp_path):
    path = tmp_path / "empty.npz"
    some = np.ones((4, 5), dtype=np.uint8)
    np.savez(path, train=np.zeros((0, 5), dtype=np.uint8), valid=some, test=some)
    bad(["train", "--data", path, "--out", tmp_path / "o"], "the training split is empty")


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad(["train", *TINY, "--out", blocker / "sub"], "not writable")


def test_truncated_checkpoint(run_dir, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((run_dir / "checkpoint.pt").read_bytes()[:5000])
    bad(["eval", cut], "cannot be loaded safely")


class Payload:
    def __reduce__(self):
        return (print, ("this code ran",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": Payload()}, path)
    p = rws("eval", path)
    assert p.returncode == 2 and "cannot be loaded safely" in p.stderr
    assert "this code ran" not in p.stdout + p.stderr


def test_missing_checkpoint(tmp_path):
    bad(["eval", tmp_path / "none.pt"], "does not exist")


def test_debug_shows_the_traceback(tmp_path):
    p = rws("train", "--data", "mnist", "--out", tmp_path, "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr


def _npz(path, train, valid=None, test=None):
    np.savez(path, train=train, valid=train if valid is None else valid,
             test=train if test is None else test)
    return path


def test_data_with_nan(tmp_path):
    x = np.zeros((4, 5))
    x[1, 2] = np.nan
    bad(["train", "--data", _npz(tmp_path / "nan.npz", x), "--out", tmp_path / "o"], "NaN")


def test_data_with_the_wrong_dimension(tmp_path):
    path = _npz(tmp_path / "dims.npz", np.zeros((4, 5), np.uint8), np.zeros((4, 6), np.uint8))
    bad(["train", "--data", path, "--out", tmp_path / "o"], "expected 5 columns, got 6")


def test_truncated_data_file(tmp_path):
    path = _npz(tmp_path / "whole.npz", np.zeros((400, 5), np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:300])
    bad(["train", "--data", cut, "--out", tmp_path / "o"], "cannot be read")


def test_bad_sweep_config_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[grid]\nmodel = ["sbn:5"]\nK = [0]\n')
    bad(["sweep", cfg], "K must be >= 1")
    cfg.write_text("[grid\n")
    bad(["sweep", cfg], "cannot be parsed")


def test_without_a_terminal_training_prints_one_line_per_epoch(tmp_path):
    # stdout and stderr are pipes here, as under `| cat`, nohup or CI: no progress bars
    p = rws("train", *[a for a in TINY if a != "--no-progress"], "--epochs", "2",
            "--out", tmp_path, check=0)
    lines = p.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["epoch", "1"], ["epoch", "2"]]
    for line in lines[:2]:
        assert "train log p^" in line and " s " in line and "valid log p^_5" in line
    assert "\r" not in p.stderr and "step/s" not in p.stderr and "it/s" not in p.stderr


def test_an_interrupted_eval_continues_where_it_stopped(run_dir, tmp_path):
    """A long `rws eval` saves its progress; killed and rerun, it gives the record an
    uninterrupted run gives."""
    args = ["eval", run_dir / "checkpoint.pt", "-K", "400", "--no-progress", "--rows", "800",
            "--threads", "1"]
    rws(*args, "--json", tmp_path / "whole.json", check=0)
    code = ("import sys, runpy; from rws import estimate\n"
            "real = estimate.log_likelihood\n"
            "def stop_after_first(*a, snapshot=None, **k):\n"
            "    def snap(state):\n"
            "        snapshot(state)\n"
            "        if state['done'] >= 300: raise KeyboardInterrupt\n"
            "    return real(*a, snapshot=snap, **{**k, 'snapshot_every': 0})\n"
            "estimate.log_likelihood = stop_after_first\n"
            "sys.argv = ['rws'] + sys.argv[1:]\n"
            "runpy.run_module('rws', run_name='__main__')\n")
    out = tmp_path / "cut.json"
    p = subprocess.run([sys.executable, "-c", code, *map(str, args), "--json", out],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and not out.exists()
    partial = tmp_path / "cut.partial.pt"
    assert partial.exists()
    p = rws(*args, "-K", "300", "--json", out, check=2)          # another K: refused, kept
    assert "K 400 (now 300)" in p.stderr and partial.exists()
    p = rws(*args, "--json", out, check=0)
    assert "continuing the evaluation" in p.stdout and not partial.exists()
    whole, cut = (json.loads(f.read_text()) for f in (tmp_path / "whole.json", out))
    assert cut["per_point"] == whole["per_point"] and cut["ll"] == whole["ll"]


def test_a_killed_eval_says_so_and_keeps_its_progress(run_dir, tmp_path):
    """SIGTERM (and SIGINT, which a shell script's `cmd &` ignores) stop `rws eval` as
    Ctrl-C does: the progress up to the pass it was in is saved, it says how to resume,
    and the resumed run gives the uninterrupted record."""
    import signal
    import time
    args = ["eval", run_dir / "checkpoint.pt", "-K", "3000", "--no-progress", "--threads", "1"]
    rws(*args, "--json", tmp_path / "whole.json", check=0)
    out, partial = tmp_path / "cut.json", tmp_path / "cut.partial.pt"
    code = ("import sys, runpy; from rws import estimate\n"     # a snapshot every pass
            "real = estimate.log_likelihood\n"
            "estimate.log_likelihood = lambda *a, **k: real(*a, **{**k, 'snapshot_every': 0})\n"
            "sys.argv = ['rws'] + sys.argv[1:]\n"
            "runpy.run_module('rws', run_name='__main__')\n")
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = partial.stat().st_mtime_ns if partial.exists() else None
        p = subprocess.Popen([sys.executable, "-c", code, *map(str, args), "--json", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and (   # until a snapshot is written: evaluating
                not partial.exists() or partial.stat().st_mtime_ns == before):
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130 and "interrupted; run the same command again" in err
        assert partial.exists() and not out.exists()
    p = rws(*args, "--json", out, check=0)
    assert "continuing the evaluation" in p.stdout and not partial.exists()
    whole, cut = (json.loads(f.read_text()) for f in (tmp_path / "whole.json", out))
    assert cut["per_point"] == whole["per_point"]


SWALLOWED_KILL = """
import ctypes, os, signal, sys, runpy
from rws import estimate, train


def kill_in_a_callback():
    # SIGTERM handled inside a ctypes callback, as in numba's compiler: Python prints
    # the KeyboardInterrupt as "Exception ignored" and carries on
    def callback():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10 ** 6):                # the handler runs here
            pass
    ctypes.CFUNCTYPE(None)(callback)()


def once(f):
    def wrapped(*a, **k):
        if not wrapped.done:
            wrapped.done = True
            kill_in_a_callback()
        return f(*a, **k)
    wrapped.done = False
    return wrapped


estimate.StreamingLogMeanExp.add = once(estimate.StreamingLogMeanExp.add)
train.train_step = once(train.train_step)
sys.argv = ["rws"] + sys.argv[1:]
runpy.run_module("rws", run_name="__main__")
"""


@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_kill_that_python_swallowed_still_stops_the_command(run_dir, tmp_path, command):
    """A SIGTERM whose KeyboardInterrupt was raised, and ignored, inside a ctypes callback
    (numba's compiler runs one) still stops `rws eval` and `rws train` at the next pass
    or step, with the progress kept and the resume hint."""
    if command == "eval":
        args = ["eval", run_dir / "checkpoint.pt", "-K", "3000", "--no-progress",
                "--threads", "1", "--json", tmp_path / "cut.json"]
    else:
        args = ["train", *TINY, "--out", tmp_path / "run"]
    p = subprocess.run([sys.executable, "-c", SWALLOWED_KILL, *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert "Exception ignored" in p.stderr and "KeyboardInterrupt" in p.stderr
    assert p.returncode == 130 and "interrupted; run the same command again" in p.stderr
    if command == "eval":
        assert (tmp_path / "cut.partial.pt").exists() and not (tmp_path / "cut.json").exists()
    else:                                       # stopped in its first step: no epoch done
        assert not (tmp_path / "run" / "record.json").exists()


def test_eval_shards_join_into_one_test_of_the_split(run_dir, tmp_path):
    """`rws eval --points A:B` evaluates a shard; the shard from 0 draws what the whole
    evaluation draws for its points, and `rws report` joins shards that cover the split
    into one test: the mean and standard error of all their points."""
    from rws import report
    args = ["eval", run_dir / "checkpoint.pt", "-K", "400", "--no-progress", "--rows", "800",
            "--threads", "1"]
    whole = json.loads((rws(*args, "--json", tmp_path / "whole.json", check=0), tmp_path
                        / "whole.json")[1].read_text())
    N = len(whole["per_point"])
    shards = tmp_path / "shards"
    (shards / "run").mkdir(parents=True)
    for a, b in ((0, 600), (600, N)):
        p = rws(*args, "--points", f"{a}:{b}", "--json", shards / "run" / f"eval-s{a}.json",
                check=0)
        assert "eval record:" in p.stdout
    first, second = (json.loads((shards / "run" / f"eval-s{a}.json").read_text())
                     for a in (0, 600))
    assert first["points"] == [0, 600] and first["split_points"] == N
    assert first["per_point"] == whole["per_point"][:600]       # the same draws
    assert second["per_point"] != whole["per_point"][600:]      # seed + 600: its own
    _, _, evals = report.load_records([shards])
    values = np.array(first["per_point"] + second["per_point"])
    assert len(evals) == 1 and evals.eval_K[0] == 400 and len(evals.per_point[0]) == N
    assert evals.ll[0] == pytest.approx(values.mean())
    assert evals.se[0] == pytest.approx(values.std(ddof=1) / np.sqrt(N))
    (shards / "run" / "eval-s600.json").unlink()                 # a gap: no test yet
    assert report.load_records([shards])[2].empty


@pytest.mark.parametrize("points, message", [
    ("5:3", "needs 0 <= A < B, got 5:3"),
    ("a:b", "expected A:B (e.g. 5000:10000), got 'a:b'"),
    ("0:99999", "--points 0:99999 reaches past the test split's"),
])
def test_a_bad_point_range_gets_one_clear_line(run_dir, tmp_path, points, message):
    p = rws("eval", run_dir / "checkpoint.pt", "-K", "2", "--points", points, "--json",
            tmp_path / "e.json", check=2)
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e.json").exists()


def test_eval_progress_lines_count_hours_left_at_this_processs_rate():
    """Resumed at 100 points after 360 s, at 300 points after 1,080 s in all: this
    process took 720 s for 200 points, so the 700 left take 2,520 s."""
    lines = EvalProgressLines({"done": 100, "seconds": 360.0})
    assert lines.line({"done": 300, "N": 1000, "seconds": 1080.0}) == (
        "eval: 300 of 1,000 points (30.0%), 0.30 h so far, about 0.7 h to go")


def test_an_eval_in_a_log_file_prints_progress_lines(run_dir, tmp_path):
    """Without a terminal (nohup, a pipe) `rws eval` prints a line at its snapshots (every
    ten minutes; here every one); --no-progress silences them."""
    code = ("import sys, runpy; from rws import cli, estimate\n"
            "cli.EvalProgressLines.every = 0\n"
            "real = estimate.log_likelihood\n"
            "estimate.log_likelihood = lambda *a, **k: real(*a, **{**k, 'snapshot_every': 0})\n"
            "sys.argv = ['rws'] + sys.argv[1:]\n"
            "runpy.run_module('rws', run_name='__main__')\n")
    args = ["eval", run_dir / "checkpoint.pt", "-K", "50", "--rows", "100", "--threads", "1"]
    for extra, expect in (([], True), (["--no-progress"], False)):
        p = subprocess.run([sys.executable, "-c", code, *map(str, args), *extra,
                            "--json", tmp_path / f"e{len(extra)}.json"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("eval: ")]
        assert bool(lines) == expect
        if expect:
            assert lines[0].startswith("eval: 2 of ") and "h to go" in lines[-1]


def test_the_suites_warnings_print_as_one_line_and_others_keep_their_source():
    from rws import cli, zoo
    ours = cli._one_line_warning("spec lists layers from the data up", UserWarning, zoo.__file__, 160)
    assert ours == "rws: warning: spec lists layers from the data up\n"
    theirs = cli._one_line_warning("leaked semaphore", UserWarning, "/usr/lib/python3/x.py", 7)
    assert theirs.startswith("/usr/lib/python3/x.py:7: UserWarning: leaked semaphore")
