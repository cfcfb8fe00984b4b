"""Sweeps: local and Dask executors agree, interrupted sweeps resume, failures are
recorded; reports render from records."""
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from rws import report, results, sweep
from rws.errors import UserError
from rws.layers.bernoulli import SAMPLER

TINY = {"data": "dna", "epochs": 1, "batch_size": 100, "valid_k": 2, "test_k": 2,
        "threads": 1, "lr": 3e-2}


def config(**grid):
    return {"name": "t", "defaults": dict(TINY),
            "grid": grid or {"model": ["sbn:5", "sbn:3-2"], "K": [2, 3]}}


def finished(out):
    return {p.parent.name: json.loads(p.read_text())
            for p in out.glob("*/record.json") if json.loads(p.read_text())["status"] == "finished"}


def test_local_and_dask_executors_give_the_same_records(tmp_path):
    cfg = config()
    sweep.run(cfg, tmp_path / "local", workers=2, log=lambda *_: None)
    sweep.run(cfg, tmp_path / "dask", workers=2, scheduler="local", log=lambda *_: None)
    local, dask = finished(tmp_path / "local"), finished(tmp_path / "dask")
    assert len(local) == 4 and local.keys() == dask.keys()
    for cell in local:   # same seeds, same single-threaded arithmetic: same numbers
        assert local[cell]["test"]["ll"] == dask[cell]["test"]["ll"]
        assert local[cell]["config"] == dask[cell]["config"]


def test_an_interrupted_sweep_completes_only_the_missing_cells(tmp_path):
    cfg = config()
    cells = sweep.expand(cfg)
    # as if the sweep had been killed after two cells
    for c in cells[:2]:
        sweep.run_cell(c.__dict__, str(tmp_path / sweep.cell_id(c)))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/record.json")}
    lines = []
    summaries = sweep.run(cfg, tmp_path, workers=1, log=lines.append)
    assert "2 finished before, 0 in use elsewhere, 2 to run" in lines[0]
    assert "[1/2 cells, " in lines[1] and "ETA" in lines[1] and "[2/2 cells, " in lines[2]
    assert sum(s["status"] == "finished" for s in summaries) == 2
    for p, t in before.items():
        assert p.stat().st_mtime_ns == t          # finished cells were not run again
    assert len(finished(tmp_path)) == 4


def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path):
    cfg = config(model=["sbn:5"], K=[2], batch_size=[100, 5000])   # 5000 > 1400 points
    summaries = sweep.run(cfg, tmp_path, workers=2, log=lambda *_: None)
    assert sorted(s["status"] for s in summaries) == ["failed", "finished"]
    errors = list(tmp_path.glob("*/error.json"))
    assert len(errors) == 1
    err = json.loads(errors[0].read_text())
    assert "batch size 5000 is larger" in err["error"] and err["traceback"]
    assert len(finished(tmp_path)) == 1


@pytest.mark.parametrize("cfg,message", [
    ({"grid": {"modle": ["sbn:5"]}}, "unknown setting\\(s\\) \\['modle'\\]"),
    ({"grid": {"model": "sbn:5"}}, "must be a non-empty list"),
    ({"grid": {"model": ["sbn:x"]}}, "cannot parse model spec"),
    ({"grid": {"data": ["nope"]}}, "unknown data set 'nope'"),
    ({"grid": {"K": [0]}}, "K must be >= 1"),
    ({"grid": {"method": ["vi"]}}, "unknown method 'vi'"),
    ({"gird": {}}, "unknown section"),
    ({}, "no cells"),
])
def test_bad_sweep_configs_fail_before_anything_runs(tmp_path, cfg, message):
    with pytest.raises(UserError, match=message):
        sweep.run({"defaults": dict(TINY), **cfg}, tmp_path, log=lambda *_: None)
    assert not list(tmp_path.glob("*/record.json"))


def test_cells_cross_the_grid_and_deduplicate():
    cfg = {"defaults": dict(TINY), "grid": {"seed": [0, 1]},
           "cells": [{"method": "ws", "model": "sbn:5"}, {"method": "rws", "model": "sbn:5", "K": 2},
                     {"method": "rws", "model": "sbn:5", "K": 2}]}
    cells = sweep.expand(cfg)
    assert len(cells) == 4 and {c.seed for c in cells} == {0, 1}


def fixture_record(run_dir, model, method, K, ll, options=None, sampler=SAMPLER, **config):
    """A finished run's record (test at K = 100) and its eval records at K = 10, 100 and
    1,000, all drawn with ``sampler`` (None: a record from before samplers were named)."""
    run_dir.mkdir(parents=True)
    named = {"sampler": sampler} if sampler else {}
    rec = {"status": "finished", "config": {"data": "dna", "model": model, "method": method,
           "K": K, "seed": 0, "batch_size": 100, "lr": 1e-3, "method_options": options or {},
           **config},
           "epochs_done": 2, "best_epoch": 2, "seconds_per_epoch": 0.5 * K,
           "model": {"parameters": 100},
           "test": {"ll": ll - 1, "se": 0.3, "K": 100, **named},
           "epochs": [{"epoch": 1, "train_ll": ll - 5, "seconds": 0.5 * K, "valid_ll": ll - 2},
                      {"epoch": 2, "train_ll": ll - 3, "seconds": 0.5 * K, "valid_ll": ll}]}
    (run_dir / "record.json").write_text(json.dumps(rec))
    for eval_k, d in ((10, -3), (100, -1), (1000, 0)):   # record's test K is 100 below
        (run_dir / f"eval-test-K{eval_k}.json").write_text(json.dumps(
            {"K": eval_k, "ll": ll + d, "se": 0.3, "split": "test", "config": rec["config"],
             **named}))


def test_report_renders_tables_and_figures_from_records(tmp_path):
    runs = tmp_path / "runs"
    for K, ll in ((1, -100.0), (5, -95.0), (25, -93.0)):
        fixture_record(runs / f"rws{K}", "sbn:200", "rws", K, ll)
    fixture_record(runs / "ws", "sbn:200", "ws", 1, -110.0)
    fixture_record(runs / "wake", "sbn:200", "rws", 5, -97.0, {"sleep_q": False})
    fixture_record(runs / "bf16", "sbn:200", "rws", 5, -95.5, grad_precision="bfloat16")
    fixture_record(runs / "ref", "sbn:200", "rws", 5, -90.0, protocol="ref", lr_decay=1.02)
    (runs / "junk.json").write_text("{not json")
    summary = report.report([runs], tmp_path / "out")
    assert summary["runs"] == 7 and summary["evals"] == 21
    assert set(summary["figures"]) == {"ll_vs_train_k", "ll_vs_eval_k", "ll_vs_epoch",
                                       "time_to_quality", "seconds_per_epoch"}
    for name in summary["figures"]:
        assert (tmp_path / "out" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "out" / "figures" / f"{name}.svg").exists()
    table = (tmp_path / "out" / "tables" / "test_ll.md").read_text()
    assert "rws (wake+sleep)" in table and "rws (wake)" in table and "ws" in table
    assert "rws (wake+sleep) [bf16 grads]" in table       # a precision of its own
    # the best run of each model/method, scored by its largest-K test evaluation, with
    # its protocol where that is not the default
    assert "-90.00 ± 0.30 (K=5, eval K=1000, ref, lr/1.02^epoch)" in table
    csv = (tmp_path / "out" / "tables" / "runs.csv").read_text().splitlines()
    assert len(csv) == 1 + 7 and "ref, lr/1.02^epoch" in csv[-1] + "".join(csv)
    # the K curve: one row per series trained at several K; the lone ref run is no curve
    curve = pd.read_csv(tmp_path / "out" / "tables" / "k_curve.csv", keep_default_na=False)
    assert curve.to_dict("records") == [{
        "data": "dna", "model": "sbn:200", "method": "rws (wake+sleep)", "setting": "modern",
        "batch_size": 100, "K=1": "-100.00 ± 0.30 (eval K=1000)", "K=5": "-95.00 ± 0.30 (eval K=1000)",
        "K=25": "-93.00 ± 0.30 (eval K=1000)", "steps": "+5.00 ± 0.42, +2.00 ± 0.42",
        "step SE": "combined", "monotone": "yes"}]


def test_tests_on_the_lattice_sampler_are_marked_and_give_way_to_exact_re_tests(tmp_path):
    """Records from before the exact sampler (no "sampler" key) drew on the 2^-24
    lattice: their cells say so, an exact re-test replaces them even at a smaller K, and
    shards of two samplers never join into one test."""
    runs = tmp_path / "runs"
    fixture_record(runs / "old", "sbn:200", "rws", 5, -95.0, sampler=None)
    fixture_record(runs / "new", "sbn:200", "ws", 1, -99.0)
    report.report([runs], tmp_path / "out")
    table = (tmp_path / "out" / "tables" / "test_ll.md").read_text()
    assert "-95.00 ± 0.30 (K=5, eval K=1000, lattice sampler)" in table
    assert "-99.00 ± 0.30 (K=1, eval K=1000)" in table
    t = pd.read_csv(tmp_path / "out" / "tables" / "ll_vs_eval_k.csv")
    assert set(t[t.run.str.endswith("old")].sampler) == {"lattice"}
    # a model with Gaussian latents draws no Bernoulli unit: nothing to mark
    fixture_record(runs / "vae", "gauss:50", "vae", 1, -91.0, sampler=None)
    report.report([runs], tmp_path / "out")
    assert "-91.00 ± 0.30 (K=1, eval K=1000)" in (tmp_path / "out" / "tables" / "test_ll.md").read_text()
    # an exact re-test at K = 100 beats the lattice's K = 1,000
    config = json.loads((runs / "old" / "record.json").read_text())["config"]
    (runs / "old" / "eval-test-K100-exact.json").write_text(json.dumps(
        {"K": 100, "ll": -97.0, "se": 0.3, "split": "test", "config": config,
         "sampler": SAMPLER}))
    report.report([runs], tmp_path / "out")
    table = (tmp_path / "out" / "tables" / "test_ll.md").read_text()
    assert "-97.00 ± 0.30 (K=5, eval K=100)" in table and "lattice" not in table
    # two halves of a split drawn on different samplers are no test of the split
    for (a, b), sampler in (((0, 2), None), ((2, 4), SAMPLER)):
        (runs / "new" / f"eval-test-K5000-points{a}-{b}.json").write_text(json.dumps(
            {"K": 5000, "ll": -90.0, "se": 0.3, "split": "test", "config": config, "seed": 0,
             "points": [a, b], "split_points": 4, "per_point": [-90.0, -90.0],
             **({"sampler": sampler} if sampler else {})}))
    evals = report.load_records([runs])[2]
    assert 5000 not in set(evals.eval_K)


@pytest.mark.parametrize("lls, verdict", [((-100, -95, -93), "yes"),
                                          ((-100, -95, -95.2), "yes (within SE)"),
                                          ((-100, -95, -97), "no")])
def test_the_k_curve_says_whether_the_likelihood_rises_with_k(lls, verdict):
    runs = pd.DataFrame({"run": ["a", "b", "c"], "data": "d", "model": "m", "method": "rws",
                         "setting": "modern", "batch_size": 25, "K": [1, 5, 25], "test_ll": lls, "test_se": 0.3,
                         "test_k": 5000})
    assert report.k_curve(runs).monotone.tolist() == [verdict]


def test_a_paired_step_is_the_mean_and_standard_error_of_per_point_differences():
    a = np.array([-100.0, -90.0, -80.0])
    b = np.array([-99.0, -89.5, -78.0])          # differences 1, 0.5, 2
    mean, se = report.paired_step(a, b)
    # by hand: mean 7/6; deviations -1/6, -2/3, 5/6 -> variance (1/36 + 4/9 + 25/36) / 2
    # = 7/12; se = sqrt(7/12) / sqrt(3)
    assert mean == pytest.approx(7 / 6) and se == pytest.approx(math.sqrt(7 / 12 / 3))


def test_the_k_curve_pairs_its_steps_where_the_cells_kept_per_point_values():
    # three runs on the same 2,000 test points whose difficulty varies by +-10 nats: a
    # rise of 0.1 nats (K=5 -> 10) is far inside the combined error (0.3) but far outside
    # the paired one (~0.001); a fall of 0.15 (10 -> 25) is a tie unpaired and a fall paired
    rng = np.random.default_rng(0)
    hard = rng.normal(-100.0, 10.0, 2000)
    pts = [hard, hard + 0.1 + rng.normal(0, 0.05, 2000), hard - 0.05 + rng.normal(0, 0.05, 2000)]
    se = [float(p.std(ddof=1) / math.sqrt(len(p))) for p in pts]
    runs = pd.DataFrame({"run": ["a", "b", "c"], "data": "d", "model": "m", "method": "rws",
                         "setting": "modern", "batch_size": 25, "K": [5, 10, 25],
                         "test_ll": [float(p.mean()) for p in pts], "test_se": se,
                         "test_k": 5000, "test_points": pts})
    row = report.k_curve(runs).iloc[0]
    d1 = pts[1] - pts[0]
    assert row["step SE"] == "paired" and row.monotone == "no"
    assert row.steps.startswith(f"+0.10 ± {d1.std(ddof=1) / math.sqrt(2000):.1g}, -0.15 ± ")
    unpaired = report.k_curve(runs.assign(test_points=None)).iloc[0]
    assert unpaired["step SE"] == "combined" and unpaired.monotone == "yes (within SE)"
    assert unpaired.steps == "+0.10 ± 0.32, -0.15 ± 0.32"
    # an rws eval record with per-point values pairs with a record that kept its own
    evals = pd.DataFrame({"run": ["a"], "split": ["test"], "eval_K": [5000],
                          "ll": [float(pts[0].mean())], "se": [se[0]], "per_point": [pts[0]]})
    mixed = report.k_curve(runs.assign(test_points=[None, pts[1], None]), evals).iloc[0]
    assert mixed["step SE"] == "paired where marked *" and mixed.steps.endswith("± 0.32")
    assert mixed.steps.split(", ")[0].endswith("*")


def test_the_report_pairs_steps_from_the_per_point_values_in_the_records(tmp_path):
    runs = tmp_path / "runs"
    for K, ll in ((1, -100.0), (5, -95.0)):
        fixture_record(runs / f"rws{K}", "sbn:200", "rws", K, ll)
        rec = json.loads((runs / f"rws{K}" / "eval-test-K1000.json").read_text())
        rec["per_point"] = [ll + 1.0, ll - 1.0, ll + 2.0, ll - 2.0]   # mean ll, paired: exact
        (runs / f"rws{K}" / "eval-test-K1000.json").write_text(json.dumps(rec))
    report.report([runs], tmp_path / "out")
    curve = pd.read_csv(tmp_path / "out" / "tables" / "k_curve.csv", keep_default_na=False)
    assert curve.steps.tolist() == ["+5.00 ± 0"] and curve["step SE"].tolist() == ["paired"]


def test_the_eval_k_table_gives_each_rise_with_its_paired_error():
    """A run tested by its record at K = 1,000 and by `rws eval` at 10,000 and 100,000,
    each on the same four points: each rise is the mean of the per-point differences,
    its error their standard deviation over sqrt(4); an eval record without per-point
    values gets the combined error; another split starts a sequence of its own."""
    pts = [np.array([-100.0, -90.0, -80.0, -70.0]), np.array([-99.0, -89.5, -78.0, -69.5]),
           np.array([-98.0, -89.0, -78.0, -69.0])]
    runs = pd.DataFrame({"run": ["a"], "data": "d", "model": "m", "method": "rws", "K": [5],
                         "test_ll": [pts[0].mean()], "test_se": [5.0], "test_k": [1000],
                         "test_seconds": [1.0], "test_points": [pts[0]]})
    evals = pd.DataFrame({"run": "a", "data": "d", "model": "m", "method": "rws", "train_K": 5,
                          "split": ["test", "test", "test", "valid"],
                          "eval_K": [100000, 10000, 5000, 5000],
                          "ll": [pts[2].mean(), pts[1].mean(), -84.0, -83.0],
                          "se": [5.0, 5.0, 3.0, 4.0], "seconds": 1.0,
                          "per_point": [pts[2], pts[1], None, None]})
    t = report.eval_k_table(runs, evals)
    assert t.split.tolist() == ["test"] * 4 + ["valid"]
    assert t.eval_K.tolist() == [1000, 5000, 10000, 100000, 5000]
    assert t.source.tolist() == ["record"] + ["rws eval"] * 4
    assert math.isnan(t.rise[0]) and math.isnan(t.rise[4]) and t.rise_se_is[4] == ""
    # 1,000 -> 5,000 (no per-point values): combined; 5,000 -> 10,000 likewise;
    # 10,000 -> 100,000: differences [1, 0.5, 0, 0.5], mean 0.5, sd sqrt(1/6)
    assert t.rise_se_is.tolist()[1:4] == ["combined", "combined", "paired"]
    assert t.rise[1] == pytest.approx(-84.0 - pts[0].mean())
    assert t.rise_se[1] == pytest.approx(math.hypot(5.0, 3.0))
    assert t.rise[3] == pytest.approx(0.5)
    assert t.rise_se[3] == pytest.approx(math.sqrt(1 / 6) / 2)
    assert "per_point" not in t and "points" not in t


def test_the_k_curve_compares_its_cells_at_one_evaluation_k():
    # K=5 was also tested at K=100,000 (1.2 nats higher): the curve keeps it at the
    # K=5,000 that all three cells share, so its step is not lifted by the larger K
    # run "d", at batch 100, is no cell of the batch-25 curve (and alone, no curve)
    runs = pd.DataFrame({"run": ["a", "b", "c", "d"], "data": "d", "model": "m",
                         "method": "rws", "setting": "modern", "batch_size": [25, 25, 25, 100],
                         "K": [1, 5, 10, 5], "test_ll": [-112.5, -104.0, -102.9, -103.0],
                         "test_se": 0.3, "test_k": 5000})
    evals = pd.DataFrame({"run": ["b"], "split": ["test"], "eval_K": [100000],
                          "ll": [-102.8], "se": [0.3]})
    curve = report.k_curve(runs, evals)
    row = curve.iloc[0]
    assert len(curve) == 1 and row.batch_size == 25
    assert row["K=5"] == "-104.00 ± 0.30 (eval K=5000)" and row.monotone == "yes"
    runs = runs.iloc[:3]
    # without a common K each cell shows its largest
    evals = pd.DataFrame({"run": ["a", "b", "c"], "split": "test", "eval_K": [1000, 100000, 2000],
                          "ll": [-112.0, -102.8, -102.5], "se": 0.3})
    runs = runs.assign(test_k=[10, 20, 30])
    assert report.k_curve(runs, evals).iloc[0]["K=5"] == "-102.80 ± 0.30 (eval K=100000)"


@pytest.mark.parametrize("se, shown", [(0.3, "0.30"), (0.005, "0.01"), (0.0048, "0.005"),
                                        (0.00004, "4e-05")])
def test_a_small_standard_error_does_not_print_as_zero(se, shown):
    assert report._ll_se(-11.9747, se) == f"-11.97 ± {shown}"


def test_the_data_set_table_has_a_row_per_set_and_a_column_per_model(tmp_path):
    runs = tmp_path / "runs"
    fixture_record(runs / "dna-sbn", "sbn:200", "rws", 5, -90.0)
    fixture_record(runs / "dna-nade", "nade:200", "rws", 5, -85.0)
    fixture_record(runs / "adult-sbn", "sbn:200", "rws", 5, -20.0, data="adult",
                   protocol="ref")
    report.report([runs], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "tables" / "by_data_set.csv", keep_default_na=False)
    assert list(table.columns) == ["data", "method", "K", "nade:200", "sbn:200", "best model"]
    assert table.data.tolist() == ["adult", "dna"] and table.K.tolist() == [5, 5]
    adult, dna = table.to_dict("records")
    assert adult["sbn:200"] == "-20.00 ± 0.30 (eval K=1000, 2 ep, 0.00 h, ref)"
    assert adult["nade:200"] == "" and adult["best model"] == "sbn:200"
    assert dna["nade:200"].startswith("-85.00 ± 0.30") and dna["best model"] == "nade:200"


def test_report_without_records_says_so(tmp_path):
    with pytest.raises(UserError, match="no run records"):
        report.report([tmp_path], tmp_path / "out")


def test_a_worker_that_dies_fails_its_cell_not_the_sweep(tmp_path, monkeypatch):
    import os
    cfg = config(model=["sbn:5"], K=[2, 3])
    cells = sweep.expand(cfg)
    doomed = sweep.cell_id(cells[0])
    real = sweep.run_cell

    def maybe_die(cfg_dict, run_dir):
        if run_dir.endswith(doomed):
            os._exit(9)          # as if killed
        return real(cfg_dict, run_dir)

    monkeypatch.setattr(sweep, "run_cell", maybe_die)
    summaries = sweep.run(cfg, tmp_path, workers=1, scheduler="local", log=lambda *_: None)
    status = {s["cell"]: s["status"] for s in summaries}
    assert status[doomed] == "failed" and (tmp_path / doomed / "error.json").exists()
    error = next(s["error"] for s in summaries if s["cell"] == doomed)
    assert "KilledWorker" in error and "on 1 different workers" in error   # no retries
    assert set(status.values()) == {"failed", "finished"}, summaries      # the other ran


def test_published_numbers_print_beside_ours_with_their_source(tmp_path):
    runs = tmp_path / "runs"
    fixture_record(runs / "rws5", "sbn:200", "rws", 5, -95.0)
    pub = tmp_path / "published.toml"
    pub.write_text('''
[[entry]]
data = "dna"
model = "sbn:200"
method = "rws (wake+sleep)"
K = 5
test_ll = -96.5
eval_k = 5000
budget = "3,280 epochs, batch 20"
status = "read"
source = "A paper"
table = "Table 2, row SBN"

[[entry]]
data = "dna"
model = "nade:200"
method = "rws (wake+sleep)"
K = 5
test_ll = -90.0
eval_k = 1000
budget = "not stated"
status = "secondary"
source = "Another paper"
table = "Table 1"
via = "someone's README"

[[not_found]]
source = "The RWS paper"
what = "the UCI table"
''')
    summary = report.report([runs], tmp_path / "out", pub)
    assert summary["published"] == 2
    md = (tmp_path / "out" / "tables" / "published.md").read_text()
    # ours from the largest-K evaluation (-95.0 at K=1000), the difference to -96.5
    assert "-95.00 ± 0.30" in md and "1.50" in md and "Table 2, row SBN" in md
    assert "3,280 epochs, batch 20" in md                     # both budgets side by side
    assert "not run" in md and "via someone's README" in md
    assert "The RWS paper: the UCI table" in md
    pub.write_text('[[entry]]\ndata = "dna"\ntest_ll = -1.0\n')
    with pytest.raises(UserError, match="entry 1 lacks"):
        report.report([runs], tmp_path / "out", pub)


def test_progress_line_estimates_the_rest_at_the_pace_so_far():
    assert sweep.progress_line(3, 12, 41 * 60) == "3/12 cells, 41 min, ETA 2 h 03 min"
    assert sweep.progress_line(12, 12, 7200) == "12/12 cells, 2 h 00 min"


def test_a_sweep_skips_a_cell_that_another_process_trains(tmp_path):
    from rws import results
    cells = sweep.expand(config(model=["sbn:5"], K=[2, 3]))
    busy = tmp_path / sweep.cell_id(cells[0])
    busy.mkdir(parents=True)
    lock = results.lock_run_dir(busy)           # as if another process trained it
    try:
        lines = []
        summaries = sweep.run(config(model=["sbn:5"], K=[2, 3]), tmp_path, log=lines.append)
    finally:
        lock.release()
    status = {s["cell"]: s["status"] for s in summaries}
    assert status[busy.name].startswith("skipped (in use by process")
    assert any("1 in use elsewhere, 1 to run" in line for line in lines)
    assert not (busy / "record.json").exists()


def test_progress_lists_running_runs_and_cells_that_could_not_run(tmp_path):
    runs = tmp_path / "runs"
    fixture_record(runs / "done", "sbn:200", "rws", 5, -95.0)
    fixture_record(runs / "going", "sbn:200", "ws", 1, -110.0)
    rec = json.loads((runs / "going" / "record.json").read_text())
    (runs / "going" / "record.json").write_text(json.dumps({**rec, "status": "running"}))
    (runs / "rcv1").mkdir()
    (runs / "rcv1" / "error.json").write_text(json.dumps({
        "config": {"data": "rcv1", "model": "sbn:200", "method": "rws", "K": 5},
        "error": "UserError: data set 'rcv1' is not shipped and could not be downloaded"}))
    results.save_checkpoint(runs / "done" / "eval-test-K100000-points0-5000.partial.pt", {
        "key": {"params": "x", "split": "test", "seed": 1, "K": 100000, "rows": 1337,
                "points": [0, 5000], "split_points": 10000},
        "progress": {"K": 100000, "rows": 1337, "N": 5000, "done": 975,
                     "per_point": torch.zeros(975), "ess": torch.ones(975),
                     "generator": torch.Generator().get_state(), "seconds": 2520.0}})
    (runs / "done" / "eval-test-K5000.partial.pt").write_bytes(b"half a file")   # passed over
    report.report([runs], tmp_path / "out")
    table = (tmp_path / "out" / "tables" / "progress.md").read_text()
    assert "running" in table and "finished" in table
    assert "not run: data not available" in table
    assert ("evaluating test at K=100,000 of points 0:5000: 975 of 5,000 points, 0.70 h so far"
            in table) and table.count("evaluating") == 1


def test_rws_progress_prints_the_unfinished_work(tmp_path, capsys):
    from rws import cli
    runs = tmp_path / "runs"
    fixture_record(runs / "done", "sbn:200", "rws", 5, -95.0)
    fixture_record(runs / "going", "sbn:200", "ws", 1, -110.0)
    rec = json.loads((runs / "going" / "record.json").read_text())
    (runs / "going" / "record.json").write_text(json.dumps({**rec, "status": "running"}))
    assert cli.main(["progress", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| going " in out and "| done " not in out and "| running " in out
    assert re.search(r"\| +2 \|", out) and "2.00" not in out    # epochs done: a count
    assert cli.main(["progress", str(runs), "--all"]) == 0
    assert "| done " in capsys.readouterr().out
    assert cli.main(["progress", str(runs / "done")]) == 0
    assert "nothing unfinished below" in capsys.readouterr().out
    assert cli.main(["progress", str(tmp_path / "nope")]) == 2
    assert "nope: no such directory" in capsys.readouterr().err

