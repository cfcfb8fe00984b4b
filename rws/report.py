"""Tables and figures from result records: `rws report`.

Reads every ``record.json`` (one per run, from ``rws train`` or ``rws sweep``) and every
``eval-*.json`` (from ``rws eval``; the shards of ``rws eval --points`` count as one test
once they cover the split, ``joined_shards``) below the given directories, and writes

    tables/test_ll.{md,csv}          paper-style: test log p^_K by model and method (the
                                     best run of each; its largest-K test evaluation; its
                                     setting where that is not the modern protocol)
    tables/runs.{md,csv}             one row per run: K, setting, epochs, test LL +- SE,
                                     s/epoch
    tables/seconds_per_epoch.{md,csv}
    tables/progress.{md,csv}         every run record, finished or not: status, epochs
                                     done, best validation LL so far, hours so far; every
                                     cell that could not run (its error.json), e.g.
                                     "not run: data not available"; and every unfinished
                                     ``rws eval`` (its eval-*.partial.pt): points done
    tables/published.{md,csv}        ours beside each published number of a
                                     ``published.toml`` (source, status, difference),
                                     and the sources whose tables nobody could read
    tables/k_curve.{md,csv}          test LL by training K, a row per model/method/setting
                                     trained at several K, each step with its standard
                                     error (paired where both cells kept their per-point
                                     estimates), and whether it rises with K
    figures/ll_vs_train_k.{png,svg}  test LL against training K, one line per model/method
                                     and setting (protocol, learning-rate decay)
    tables/ll_vs_eval_k.{md,csv}     each run that ``rws eval`` tested: every estimate
                                     (its record's and its eval records') by evaluation
                                     K, with the rise over the previous K (paired SE)
    figures/ll_vs_eval_k.{png,svg}   those runs' test estimates against evaluation K, as
                                     the rise over each run's smallest K
    figures/ll_vs_epoch.{png,svg}    validation LL against epoch, a panel per experiment
                                     (the runs' directory) and model, a line per method/K
    figures/time_to_quality.{png,svg} validation LL against training seconds, a panel per
                                     model, a line per method/K
    figures/seconds_per_epoch.{png,svg}
    figures/diagnostics_vs_k.{png,svg} SNR and variance of each gradient estimator against K
                                     (from ``rws diagnose`` records), P and Q panels
    figures/bias_vs_k.{png,svg}      their bias against K where the target is exact
    figures/diagnostics_vs_epoch.{png,svg} SNR and ESS against epoch, runs trained with
                                     --diagnose-every
    tables/diagnostics.{md,csv}      every diagnostics row
    figures/samples/<run>.png        dreams, data points and reconstructions of each
                                     finished image-data run whose checkpoint is at hand

Every number comes from a record, or (published values) from ``published.toml`` with
its source; nothing is typed in by hand. A test drawn on another Bernoulli sampler than
today's (``SAMPLER``; a record that names none drew on the 2^-24 lattice, ``LATTICE``)
says so in its cell ("lattice sampler") and in the ``test_sampler``/``sampler`` columns,
and a re-test on today's sampler takes its place (``with_best_test``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rws import zoo
from rws.errors import UserError
from rws.layers.bernoulli import SAMPLER

# the sampler of a test record written before ``SAMPLER`` existed: uniforms on the 2^-24
# lattice, compared with p alone, which inflates large-K estimates (results/README.md)
LATTICE = "lattice"


def _label(method: str, options: dict) -> str:
    """rws with its Q updates spelled out, e.g. 'rws (wake+sleep)'."""
    if method != "rws":
        return method
    wake, sleep = options.get("wake_q", True), options.get("sleep_q", True)
    return "rws (" + "+".join(n for n, on in (("wake", wake), ("sleep", sleep)) if on) + ")"


def _setting(cfg: dict) -> str:
    """The training protocol with any learning-rate decay, e.g. 'modern, lr/1.02^epoch'."""
    decay = cfg.get("lr_decay", 1.0)
    return cfg.get("protocol", "modern") + (f", lr/{decay:g}^epoch" if decay != 1.0 else "")


def _ll_se(ll: float, se: float) -> str:
    """"ll ± se" to 0.01 nats; a standard error below 0.005 keeps one significant digit
    instead of printing as 0.00 (connect4's 47,557 test points give 0.005)."""
    return f"{ll:.2f} ± {_se(se)}"


def _se(se: float) -> str:
    return f"{se:.2f}" if se >= 0.005 else f"{se:.1g}"


def _ll_se_column(runs: pd.DataFrame) -> pd.Series:
    return pd.Series([_ll_se(a, b) for a, b in zip(runs.test_ll, runs.test_se)],
                     index=runs.index, dtype=object)


def _sampler(estimate: dict, model: str | None) -> str:
    """The Bernoulli sampler a test record's estimate drew with (``LATTICE`` before the
    records named it). A model with Gaussian latents draws no Bernoulli unit to test
    (its proposals are Gaussian, its pixels are scored), so its estimate is today's."""
    if "sampler" in estimate:
        return estimate["sampler"]
    try:
        family = zoo.parse(model).q.family if model is not None else None
        gaussian = family is not None and zoo.FAMILIES[family].latent == "gaussian"
    except UserError:       # a model name this version cannot parse: what the record says
        gaussian = False
    return SAMPLER if gaussian else LATTICE


def _unless_exact(sampler: pd.Series) -> pd.Series:
    """", <sampler> sampler" for a table cell whose estimate drew on another sampler than
    today's, "" for today's."""
    return sampler.map(lambda s: "" if s == SAMPLER else f", {s} sampler")


def _unless_modern(setting: pd.Series) -> pd.Series:
    """", <setting>" for a table cell, "" for the default (modern) protocol."""
    return setting.map(lambda s: "" if s == "modern" else ", " + s)


def _json_files(paths):
    """(path, parsed object) of every JSON file below paths that holds an object; a
    foreign or half-copied file is not a record and is passed over."""
    for p in map(Path, paths):
        for f in ([p] if p.is_file() else sorted(p.rglob("*.json"))):
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                yield f, rec


def load_records(paths) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, epochs, evals) data frames from every record below ``paths``."""
    runs, epochs, evals, shards = [], [], [], []
    for f, rec in _json_files(paths):
        if f.name == "record.json" and rec.get("status") == "finished":
            cfg = rec["config"]
            run = {"run": str(f.parent), "data": cfg["data"], "model": cfg["model"],
                   "method": _label(cfg["method"], cfg.get("method_options", {}))
                   + (" [bf16 grads]" if cfg.get("grad_precision") == "bfloat16" else ""),
                   "K": cfg["K"], "seed": cfg["seed"], "batch_size": cfg["batch_size"],
                   "lr": cfg["lr"],
                   "setting": _setting(cfg),
                   "epochs": rec["epochs_done"], "stopped_by": rec.get("stopped_by"),
                   "train_hours": sum(e["seconds"] for e in rec["epochs"]) / 3600,
                   "valid_hours": sum(e.get("valid_seconds", 0) for e in rec["epochs"]) / 3600,
                   "test_seconds": rec["test"].get("seconds"),
                   "best_epoch": rec["best_epoch"], "test_ll": rec["test"]["ll"],
                   "test_se": rec["test"]["se"], "test_k": rec["test"]["K"],
                   "test_sampler": _sampler(rec["test"], cfg["model"]),
                   "test_points": _points(rec["test"]),
                   "seconds_per_epoch": rec["seconds_per_epoch"],
                   "parameters": rec["model"]["parameters"],
                   "dim": (rec.get("data") or {}).get("dim"),
                   "commit": (rec.get("environment") or {}).get("git_commit")}
            runs.append(run)
            wall = 0.0
            for e in rec["epochs"]:
                wall += e["seconds"]
                epochs.append({"run": run["run"], "experiment": f.parent.parent.name,
                               "data": run["data"], "model": run["model"],
                               "method": run["method"],
                               "K": run["K"], "epoch": e["epoch"], "wall_seconds": wall,
                               "train_ll": e["train_ll"], "valid_ll": e.get("valid_ll")})
        elif f.name.startswith("eval-") and "K" in rec and "ll" in rec:
            cfg = rec.get("config", {})
            row = {"run": str(f.parent), "data": cfg.get("data"), "model": cfg.get("model"),
                   "method": _label(cfg.get("method", "?"), cfg.get("method_options", {})),
                   "train_K": cfg.get("K"), "eval_K": rec["K"], "split": rec.get("split"),
                   "ll": rec["ll"], "se": rec["se"], "seconds": rec.get("seconds"),
                   "sampler": _sampler(rec, cfg.get("model")), "per_point": _points(rec)}
            if "points" in rec:
                shards.append({**row, "points": rec["points"], "split_points": rec["split_points"],
                               "seed": rec.get("seed")})
            else:
                evals.append(row)
    return pd.DataFrame(runs), pd.DataFrame(epochs), pd.DataFrame(evals + joined_shards(shards))


def joined_shards(shards: list[dict]) -> list[dict]:
    """The shards of one evaluation (``rws eval --points A:B``: same run, split, K, seed
    and sampler) joined into one test of the split where they cover its points [0, N) without
    gap or overlap: log p^ the mean over all N points, its SE across them, the shards'
    seconds summed. A set that does not cover the split yet gives nothing."""
    groups: dict[tuple, list[dict]] = {}
    for s in shards:
        groups.setdefault((s["run"], s["split"], s["eval_K"], s["seed"], s["sampler"]),
                          []).append(s)
    joined = []
    for group in groups.values():
        group.sort(key=lambda s: s["points"][0])
        ends = [0] + [s["points"][1] for s in group]
        if ([s["points"][0] for s in group] != ends[:-1] or ends[-1] != group[0]["split_points"]
                or any(s["per_point"] is None for s in group)):
            continue
        values = np.concatenate([s["per_point"] for s in group])
        row = {k: v for k, v in group[0].items() if k not in ("points", "split_points", "seed")}
        joined.append({**row, "ll": float(values.mean()),
                       "se": float(values.std(ddof=1) / math.sqrt(len(values))),
                       "seconds": sum(s["seconds"] or 0.0 for s in group), "per_point": values})
    return joined


def markdown_table(df: pd.DataFrame) -> str:
    """A markdown table, numbers to 2 decimals, missing values as empty cells (not NaN)."""
    return df.astype(object).where(df.notna(), "").to_markdown(index=False, floatfmt=".2f")


def _write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown_table(df) + "\n")


def with_best_test(runs: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Each run's test LL from its best test evaluation (``rws eval``): one drawn with
    today's sampler (``SAMPLER``) where the record's test was not, else one at a larger K
    than the record's test on the same sampler. An estimate on the 2^-24 lattice is biased
    upward at large K, so a re-test on today's sampler replaces it at any K."""
    if runs.empty or evals.empty:
        return runs
    test = (evals[evals.split == "test"].assign(exact=evals.sampler == SAMPLER)
            .sort_values(["exact", "eval_K"]).groupby("run").tail(1))
    merged = runs.merge(test[["run", "eval_K", "ll", "se", "seconds", "sampler", "exact"]],
                        on="run", how="left")
    record_exact = merged.test_sampler == SAMPLER
    better = merged.eval_K.notna() & (
        ((merged.exact == True) & ~record_exact)                           # noqa: E712
        | ((merged.exact == record_exact) & (merged.eval_K > merged.test_k)))
    for ours, theirs in (("test_ll", "ll"), ("test_se", "se"), ("test_seconds", "seconds"),
                         ("test_sampler", "sampler")):
        merged.loc[better, ours] = merged.loc[better, theirs]
    merged.loc[better, "test_k"] = merged.loc[better, "eval_K"].astype(int)
    return merged.drop(columns=["eval_K", "ll", "se", "seconds", "sampler", "exact"])


def tables(runs: pd.DataFrame, evals: pd.DataFrame, out: Path) -> None:
    if runs.empty:
        return
    curve = k_curve(runs, evals)          # at one evaluation K per row, not each run's largest
    record_tests, runs = runs, with_best_test(runs, evals)
    cols = ["data", "model", "method", "K", "setting", "batch_size", "epochs", "stopped_by",
            "test_ll", "test_se", "test_k", "test_sampler", "seconds_per_epoch", "train_hours",
            "valid_hours", "test_seconds", "parameters", "seed"]
    _write_table(runs[cols].sort_values(["data", "model", "method", "K"]), out, "runs")
    cell = runs.assign(value=_ll_se_column(runs) + " (K=" + runs.K.astype(str)
                       + ", eval K=" + runs.test_k.astype(int).astype(str)
                       + _unless_exact(runs.test_sampler) + _unless_modern(runs.setting) + ")")
    best = cell.sort_values("test_ll").groupby(["data", "model", "method"]).tail(1)
    paper = best.pivot_table(index=["data", "model"], columns="method", values="value",
                             aggfunc="first").reset_index().fillna("")
    _write_table(paper, out, "test_ll")
    _write_table(by_data_set(runs), out, "by_data_set")
    if not curve.empty:
        _write_table(curve, out, "k_curve")
    speed = runs.pivot_table(index=["model", "K"], columns="method", values="seconds_per_epoch",
                             aggfunc="median").reset_index()
    _write_table(speed, out, "seconds_per_epoch")
    if not evals.empty:
        _write_table(eval_k_table(record_tests, evals), out, "ll_vs_eval_k")


def _points(estimate: dict) -> np.ndarray | None:
    """The per-point log p^_K of a test record ([N]), where the record kept them."""
    values = estimate.get("per_point")
    return np.asarray(values, dtype=np.float64) if values is not None else None


def paired_step(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-point difference b_n - a_n over the same N test
    points: (mean(d), std(d) / sqrt(N)). Two models' estimates on one test set are
    correlated (a digit that is hard for one is hard for the other), so this error is
    smaller than the combined sqrt(se_a^2 + se_b^2) that treats them as independent."""
    d = b - a
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def _step(a, b) -> tuple[float, float, str]:
    """(rise b.ll - a.ll, its standard error, "paired" or "combined") of two estimates
    with ``ll``, ``se`` and ``points`` (per-point values or None): paired over the points
    (``paired_step``) where both kept them on the same points, else sqrt(se_a^2 + se_b^2)."""
    if a.points is not None and b.points is not None and len(a.points) == len(b.points):
        return b.ll - a.ll, paired_step(a.points, b.points)[1], "paired"
    return b.ll - a.ll, math.hypot(a.se, b.se), "combined"


def eval_k_table(runs: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Each run that ``rws eval`` tested, estimate by estimate: its record's own test
    (source "record") and its eval records, by split and evaluation K, each with its
    ``rise`` over the run's previous estimate of the same split and that rise's standard
    error (``_step``: paired over the points where both kept them). log p^_K is a lower
    bound that rises with K in expectation, so a rise from one K to a larger one that is
    large against its error says the smaller K had not converged; at equal K it measures
    the re-test's noise. ``runs``: the records' own tests (as from ``load_records``)."""
    cols = ["run", "data", "model", "method", "train_K", "split", "eval_K", "source",
            "sampler", "ll", "se", "seconds"]
    parts = [evals.assign(source="rws eval", sampler=evals.get("sampler", SAMPLER),
                          points=evals.per_point if "per_point" in evals else None)]
    own = runs[runs.run.isin(evals.run)] if not runs.empty else runs
    if not own.empty:
        parts.append(pd.DataFrame({
            "run": own.run, "data": own.data, "model": own.model, "method": own.method,
            "train_K": own.K, "split": "test", "eval_K": own.test_k, "source": "record",
            "sampler": own.test_sampler if "test_sampler" in own else SAMPLER,
            "ll": own.test_ll, "se": own.test_se, "seconds": own.test_seconds,
            "points": own.test_points if "test_points" in own else None}))
    entries = pd.concat(parts)
    rows = []
    for _, g in entries.sort_values(["run", "split", "eval_K", "source"]).groupby(
            ["run", "split"], sort=False):
        before = None
        for e in g.itertuples():
            rise, se, kind = _step(before, e) if before is not None else (math.nan, math.nan, "")
            rows.append({**{c: getattr(e, c) for c in cols}, "rise": rise, "rise_se": se,
                         "rise_se_is": kind})
            before = e
    return pd.DataFrame(rows, columns=[*cols, "rise", "rise_se", "rise_se_is"])


def _test_estimates(runs: pd.DataFrame, evals: pd.DataFrame | None) -> dict:
    """{run: {eval K: (ll, se, per-point values or None, sampler)}}: each run's record
    test and its ``rws eval`` test records; at one K, one on today's sampler wins."""
    points = runs.test_points if "test_points" in runs else [None] * len(runs)
    samplers = runs.test_sampler if "test_sampler" in runs else [SAMPLER] * len(runs)
    found = {r.run: {int(r.test_k): (r.test_ll, r.test_se, p, s)}
             for r, p, s in zip(runs.itertuples(), points, samplers)}
    if evals is not None and not evals.empty:
        per_point = evals.per_point if "per_point" in evals else [None] * len(evals)
        samplers = evals.sampler if "sampler" in evals else [SAMPLER] * len(evals)
        for e, p, s in zip(evals.itertuples(), per_point, samplers):
            if e.split == "test" and e.run in found:
                before = found[e.run].get(int(e.eval_K))
                if before is None or before[3] != SAMPLER or s == SAMPLER:
                    found[e.run][int(e.eval_K)] = (e.ll, e.se, p, s)
    return found


def _steps(g: pd.DataFrame) -> tuple[list[float], list[float], list[bool]]:
    """Each step of a K curve (rows sorted by K, with test_ll, test_se, points): the rise
    in test LL, its standard error (``_step``) and whether it is paired."""
    cells = list(g.rename(columns={"test_ll": "ll", "test_se": "se"}).itertuples())
    steps = [_step(a, b) for a, b in zip(cells[:-1], cells[1:])]
    return [d for d, _, _ in steps], [se for _, se, _ in steps], [k == "paired" for *_, k in steps]


def k_curve(runs: pd.DataFrame, evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Sensitivity to the training K: one row per data set, model, method and setting
    trained at more than one K, one column per K (the best run's test LL ± SE),
    ``steps``: each step's rise ± its standard error (paired over the test points where
    both cells kept their per-point estimates, ``paired_step``; otherwise combined,
    sqrt(se_a^2 + se_b^2)), ``step SE``: which of the two, and ``monotone``: whether the
    test LL rises with K at every step (a fall within one standard error counts as a tie,
    "yes (within SE)").

    A row compares its cells at one evaluation K, the largest that all of them were
    tested at (record tests and ``rws eval`` records alike): the estimate rises with the
    evaluation K, so a cell tested at a larger K alone would lift its step. Without a
    common K each cell shows its largest. Runs at another batch size form a curve of
    their own (``batch_size``). ``runs``: the records' own tests (as from
    ``load_records``)."""
    keys = ["data", "model", "method", "setting", "batch_size"]
    tested = _test_estimates(runs, evals)
    rows = []
    for key, g in runs.groupby(keys):
        if g.K.nunique() < 2:
            continue
        common = set.intersection(*(set(tested[r]) for r in g.run))
        at = lambda r: max(common) if common else max(tested[r])   # noqa: E731
        g = g.assign(test_k=[at(r) for r in g.run],
                     test_ll=[tested[r][at(r)][0] for r in g.run],
                     test_se=[tested[r][at(r)][1] for r in g.run],
                     points=[tested[r][at(r)][2] for r in g.run],
                     sampler=[tested[r][at(r)][3] for r in g.run])
        g = g.sort_values("test_ll").groupby("K").tail(1).sort_values("K")
        rises, ses, paired = _steps(g)
        monotone = ("yes" if all(d > 0 for d in rises) else
                    "yes (within SE)" if all(d > -s for d, s in zip(rises, ses)) else "no")
        row = dict(zip(keys, key))
        row.update({f"K={k}": f"{_ll_se(ll, s)} (eval K={int(ek)}{mark})"
                    for k, ll, s, ek, mark in zip(g.K, g.test_ll, g.test_se, g.test_k,
                                                  _unless_exact(g.sampler))})
        mixed = any(paired) and not all(paired)
        row["steps"] = ", ".join(f"{d:+.2f} ± {_se(s)}" + ("*" if p and mixed else "")
                                 for d, s, p in zip(rises, ses, paired))
        row["step SE"] = ("paired" if all(paired) else "combined" if not any(paired)
                          else "paired where marked *")
        row["monotone"] = monotone
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).fillna("")
    ks = sorted((c for c in table.columns if c.startswith("K=")), key=lambda c: int(c[2:]))
    return table[keys + ks + ["steps", "step SE", "monotone"]]


def by_data_set(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper-style table of the UCI and Caltech experiments: one row per data set,
    method and training K, one column per model, each cell the best run's test LL with
    its evaluation K, epochs and training hours; ``best model`` names the column that
    leads the row. ``runs`` as from ``with_best_test``."""
    cell = runs.assign(value=_ll_se_column(runs) + " (eval K="
                       + runs.test_k.astype(int).astype(str)
                       + _unless_exact(runs.test_sampler) + ", "
                       + runs.epochs.astype(int).astype(str) + " ep, "
                       + runs.train_hours.map("{:.2f}".format) + " h"
                       + _unless_modern(runs.setting) + ")")
    best = cell.sort_values("test_ll").groupby(["data", "model", "method", "K"]).tail(1)
    table = best.pivot_table(index=["data", "method", "K"], columns="model", values="value",
                             aggfunc="first").reset_index().fillna("")
    leader = best.sort_values("test_ll").groupby(["data", "method", "K"]).tail(1)
    return table.merge(leader[["data", "method", "K", "model"]].rename(
        columns={"model": "best model"}), on=["data", "method", "K"])


def load_published(path: str | Path) -> tuple[pd.DataFrame, list[dict]]:
    """(entries, not_found) of a published-numbers file (``results/published.toml``)."""
    import tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"published-numbers file {path} does not exist; give another with "
                        "--published, or --published none") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"published-numbers file {path} cannot be parsed ({e})") from None
    need = {"data", "model", "method", "K", "test_ll", "eval_k", "budget", "status", "source",
            "table"}
    for i, entry in enumerate(data.get("entry", [])):
        missing = sorted(need - set(entry))
        if missing:
            raise UserError(f"{path}: entry {i + 1} lacks {', '.join(missing)}; every "
                            "published number needs its source, table, status, protocol and "
                            "training budget")
    return pd.DataFrame(data.get("entry", [])), data.get("not_found", [])


def _read_with_config(f: Path) -> tuple[dict | None, dict | None]:
    """(record, its config) of a JSON file that has one, else (None, None)."""
    try:
        rec = json.loads(f.read_text())
        return rec, rec["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None, None


def progress_table(paths, out: Path) -> int:
    """Writes ``progress_rows`` as tables/progress.{md,csv}; returns the rows written."""
    rows = progress_rows(paths)
    if not rows.empty:
        _write_table(rows, out, "progress")
    return len(rows)


def progress_rows(paths) -> pd.DataFrame:
    """Every run record below paths, finished or still running (long experiments are
    committed as they go), every cell that could not run (its error.json) and every
    unfinished ``rws eval``: one row each, by data, model, method and K."""
    rows = []
    for p in map(Path, paths):
        records = [p] if p.is_file() else sorted(p.rglob("record.json"))
        errors = [] if p.is_file() else sorted(p.rglob("error.json"))
        for f in records + [e for e in errors if not (e.parent / "record.json").exists()]:
            rec, cfg = _read_with_config(f)
            if rec is None:
                continue
            row = {"run": f.parent.name, "data": cfg["data"], "model": cfg["model"],
                   "method": _label(cfg["method"], cfg.get("method_options", {})),
                   "K": cfg["K"]}
            if f.name == "error.json":
                row["status"] = "not run: " + _why_not(rec.get("error", "?"))
            else:
                row.update(status=rec.get("status"), epochs_done=rec.get("epochs_done"),
                           epoch_cap=cfg.get("epochs"), best_valid_ll=rec.get("best_valid_ll"),
                           best_epoch=rec.get("best_epoch"),
                           train_hours=sum(e["seconds"] for e in rec.get("epochs", [])) / 3600,
                           test_ll=(rec.get("test") or {}).get("ll"))
            rows.append(row)
        rows += [] if p.is_file() else _unfinished_evaluations(p)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    for col in ("K", "epochs_done", "epoch_cap", "best_epoch"):     # counts, not floats
        if col in table:
            table[col] = table[col].astype("Int64")
    return table.sort_values(["data", "model", "method", "K"])


def _unfinished_evaluations(path: Path) -> list[dict]:
    """A progress row for each unfinished ``rws eval`` below path (its
    ``eval-*.partial.pt``): split, K, the shard if it is one, points done, hours so far;
    the run's data, model and method from the record beside it."""
    from rws import results
    rows = []
    for f in sorted(path.rglob("eval-*.partial.pt")):
        try:
            saved = results.load_checkpoint(f, required=("key", "progress"))
        except UserError:
            continue
        key, progress = saved["key"], saved["progress"]
        _, cfg = _read_with_config(f.parent / "record.json")
        cfg = cfg or {}
        shard = (f" of points {key['points'][0]}:{key['points'][1]}" if "points" in key else "")
        rows.append({"run": f.parent.name, "data": cfg.get("data"), "model": cfg.get("model"),
                     "method": _label(cfg.get("method", "?"), cfg.get("method_options", {})),
                     "K": cfg.get("K"),
                     "status": f"evaluating {key['split']} at K={key['K']:,}{shard}: "
                               f"{progress['done']:,} of {progress['N']:,} points, "
                               f"{progress['seconds'] / 3600:.2f} h so far"})
    return rows


def _why_not(error: str) -> str:
    if "could not be downloaded" in error or "not shipped" in error:
        return "data not available (not shipped, and no download here)"
    return error.splitlines()[0][:120]


def load_diagnostics(paths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of ``rws diagnose`` records, per-epoch diagnostics of runs) below paths."""
    rows, per_epoch = [], []
    for f, rec in _json_files(paths):
        cfg = rec.get("config") or {}
        if rec.get("kind") == "diagnostics":
            for r in rec["rows"]:
                rows.append({"run": str(f.parent), "model": cfg.get("model"),
                             "trained_by": _label(cfg.get("method", "?"),
                                                  cfg.get("method_options", {})),
                             "epoch": rec.get("epoch"), "exact": rec.get("exact"), **r})
        elif f.name == "record.json":
            for e in rec.get("epochs", []):
                for name, d in (e.get("diagnostics") or {}).items():
                    per_epoch.append({"run": str(f.parent), "model": cfg.get("model"),
                                      "K": cfg.get("K"), "epoch": e["epoch"],
                                      "estimator": name, **d})
    return pd.DataFrame(rows), pd.DataFrame(per_epoch)


def diagnostics_figures(diag: pd.DataFrame, per_epoch: pd.DataFrame, out: Path,
                        tables_out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    written = []
    out.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        for ext in ("png", "svg"):
            fig.savefig(out / f"{name}.{ext}", bbox_inches="tight", dpi=120)
        plt.close(fig)
        written.append(name)

    if not diag.empty:
        _write_table(diag.drop(columns=["note"], errors="ignore"), tables_out, "diagnostics")
        d = diag.assign(panel=diag.model + ", trained by " + diag.trained_by)
        long = d.melt(id_vars=["panel", "estimator", "K"], value_vars=["snr", "variance"],
                      var_name="measure", value_name="value")
        long["measure"] = long.measure.map({"snr": "SNR ||E g|| / sqrt(tr Cov g)",
                                            "variance": "variance tr Cov g"})
        g = sns.relplot(long, x="K", y="value", hue="estimator", col="measure", row="panel",
                        kind="line", marker="o", height=3.2, aspect=1.4,
                        facet_kws={"sharey": False})
        g.set(xscale="log", yscale="log")
        g.set_titles("{row_name}: {col_name}", size=9)
        g.set_axis_labels("samples K", "")
        g.figure.suptitle("Gradient estimators against K (rws diagnose)", y=1.01)
        save(g.figure, "diagnostics_vs_k")
        d = d.assign(series=d.estimator)
        b = d.dropna(subset=["bias"]) if "bias" in d else d.iloc[0:0]
        if not b.empty:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            sns.lineplot(b, x="K", y="bias", hue="series", style="model", marker="o", ax=ax,
                         errorbar=None)
            for _, r in b.iterrows():
                ax.plot([r.K, r.K], [max(r.bias - r.mc_error, 1e-12), r.bias + r.mc_error],
                        color="grey", lw=0.8)
            ax.set(xscale="log", yscale="log", xlabel="samples K",
                   ylabel="||E g - exact target|| (bars: Monte Carlo error)",
                   title="Bias against exact targets (enumerable model)")
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            save(fig, "bias_vs_k")
    if not per_epoch.empty:
        d = per_epoch.assign(series=per_epoch.model + " " + per_epoch.estimator)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        sns.lineplot(d, x="epoch", y="snr", hue="series", marker="o", ax=axes[0],
                     errorbar=None, legend=False)
        axes[0].set(yscale="log", ylabel="SNR on the probe minibatch")
        sns.lineplot(d, x="epoch", y="ess", hue="series", marker="o", ax=axes[1], errorbar=None)
        axes[1].set(ylabel="ESS of the importance weights")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle("Gradient diagnostics during training (--diagnose-every)")
        save(fig, "diagnostics_vs_epoch")
    return written


def published_table(runs: pd.DataFrame, evals: pd.DataFrame, path: str | Path,
                    out: Path) -> int:
    """Ours beside each published number: the best run of the same data, model, method
    and training K (scored by its largest-K test evaluation) with its budget (epochs,
    batch, training hours), the published value with its training budget, our value
    minus it, and where the published value was read. Returns the rows written."""
    entries, not_found = load_published(path)
    ours = with_best_test(runs, evals) if not runs.empty else runs
    rows = []
    for e in entries.to_dict("records"):
        match = (ours[(ours.data == e["data"]) & (ours.model == e["model"])
                      & (ours.method == e["method"]) & (ours.K == e["K"])]
                 if not ours.empty else ours)
        row = {"data": e["data"], "model": e["model"], "method": e["method"], "K": e["K"]}
        if len(match):
            best = match.sort_values("test_ll").iloc[-1]
            row.update(ours=_ll_se(best.test_ll, best.test_se),
                       ours_eval_k=int(best.test_k), ours_sampler=best.test_sampler,
                       epochs=int(best.epochs),
                       batch=int(best.batch_size), train_hours=round(float(best.train_hours), 2),
                       difference=round(float(best.test_ll) - e["test_ll"], 2))
        else:
            row.update(ours="not run", ours_eval_k=None, ours_sampler=None, epochs=None, batch=None,
                       train_hours=None, difference=None)
        row.update(published=e["test_ll"], published_eval_k=e["eval_k"],
                   published_budget=e["budget"], status=e["status"],
                   source=f"{e['source']}: {e['table']}"
                   + (f" (via {e['via']})" if e.get("via") else ""))
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("ours_eval_k", "epochs", "batch", "published_eval_k"):
        if col in df:
            df[col] = df[col].astype("Int64")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "published.csv", index=False)
    lines = [markdown_table(df) if len(df) else "(no entries)", "",
             "Published values that could not be read (cells left empty, nothing quoted "
             "from memory):", ""]
    lines += [f"- {n['source']}: {n['what']}" for n in not_found]
    (out / "published.md").write_text("\n".join(lines) + "\n")
    return len(df)


def figures(runs: pd.DataFrame, epochs: pd.DataFrame, evals: pd.DataFrame, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        for ext in ("png", "svg"):
            fig.savefig(out / f"{name}.{ext}", bbox_inches="tight", dpi=120)
        plt.close(fig)
        written.append(name)

    if not runs.empty and runs.groupby(["model", "method"]).K.nunique().max() > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        d = runs.assign(series=runs.model + " " + runs.method + " (" + runs.setting + ")")
        swept = d.groupby("series").K.transform("nunique") > 1     # only series over K
        sns.lineplot(d[swept], x="K", y="test_ll", hue="series", marker="o", ax=ax, errorbar=None)
        ax.set(xscale="log", xlabel="training samples K", ylabel="test log p^ (nats)",
               title="Test log-likelihood against training K")
        ax.legend(fontsize=8, loc="lower right")
        save(fig, "ll_vs_train_k")
    tested = eval_k_table(runs, evals) if not evals.empty else evals
    tested = tested[tested.split == "test"] if not tested.empty else tested
    if not tested.empty and tested.groupby("run").eval_K.nunique().max() > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        d = tested[tested.groupby("run").eval_K.transform("nunique") > 1]  # at several K
        d = d.assign(series=d.data.astype(str) + " " + d.model.astype(str) + " "
                     + d.method.astype(str) + " K=" + d.train_K.astype(str),
                     rise=d.ll - d.groupby("run").ll.transform("first"))  # sorted by K
        sns.lineplot(d, x="eval_K", y="rise", hue="series", units="run", estimator=None,
                     marker="o", ax=ax)
        ax.set(xscale="log", xlabel="evaluation samples K",
               ylabel="log p^_K - log p^ at the smallest K (nats)",
               title="How far the test estimate rises with the evaluation K")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
        save(fig, "ll_vs_eval_k")
    valid = epochs.dropna(subset=["valid_ll"]) if not epochs.empty else epochs
    if not valid.empty:
        d = valid.assign(series=valid.method + " K=" + valid.K.astype(str),
                         panel=valid.experiment + ": " + valid.data + " " + valid.model)
        order = [f"{m} K={k}" for m, k in sorted(set(zip(d.method, d.K)))]
        g = sns.relplot(d, x="epoch", y="valid_ll", hue="series", hue_order=order,
                        col="panel", col_wrap=min(3, d.panel.nunique()), kind="line",
                        marker="o", markersize=3, height=3.2, aspect=1.3,
                        facet_kws={"sharey": False, "sharex": False})
        g.set_titles("{col_name}", size=9)
        g.set_axis_labels("epoch", "validation log p^ (nats)")
        g.legend.set_title("method, training K")
        g.figure.suptitle("Validation log-likelihood during training", y=1.02)
        save(g.figure, "ll_vs_epoch")
        # time to quality: what an update costs weighed against what it buys
        g = sns.relplot(d.assign(minutes=d.wall_seconds / 60), x="minutes", y="valid_ll",
                        hue="series", hue_order=order, col="model",
                        col_wrap=min(3, d.model.nunique()), kind="line", marker="o",
                        markersize=3, height=3.2, aspect=1.3,
                        facet_kws={"sharey": False, "sharex": False})
        g.set_titles("{col_name}", size=9)
        g.set_axis_labels("training minutes (evaluation excluded)", "validation log p^ (nats)")
        g.legend.set_title("method, training K")
        g.figure.suptitle("Time to quality: validation log-likelihood against training time",
                          y=1.02)
        save(g.figure, "time_to_quality")
    if not runs.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        d = runs.assign(series=runs.method + " K=" + runs.K.astype(str))
        sns.barplot(d, y="series", x="seconds_per_epoch", hue="model", ax=ax, errorbar=None)
        ax.set(xlabel="seconds per epoch", ylabel="", title="Training time per epoch")
        save(fig, "seconds_per_epoch")
    return written


def sample_figures(runs: pd.DataFrame, out: Path) -> list[str]:
    """A picture of each finished run on image data whose checkpoint is beside its record
    (checkpoints are not committed, so a clean checkout has none)."""
    from rws import samples
    written = []
    for run in runs.itertuples():
        ckpt = Path(run.run) / "checkpoint.pt"
        if not ckpt.exists() or not run.dim or samples.image_side(int(run.dim)) is None:
            continue
        try:
            samples.from_checkpoint(ckpt, out / f"{Path(run.run).name}.png")
        except UserError as e:
            print(f"no samples figure for {run.run}: {e}")
            continue
        written.append(f"samples/{Path(run.run).name}")
    return written


def report(paths, out: str | Path, published: str | Path | None = None) -> dict:
    """Tables and figures of every record below ``paths``; with ``published`` (a
    ``published.toml``), ours beside the published numbers."""
    runs, epochs, evals = load_records(paths)
    diag, diag_epochs = load_diagnostics(paths)
    out = Path(out)
    if not progress_table(paths, out / "tables") and evals.empty and diag.empty:
        raise UserError(f"no run records (record.json), eval or diagnostics records below "
                        f"{', '.join(map(str, paths))}")
    tables(runs, evals, out / "tables")
    n_published = published_table(runs, evals, published, out / "tables") if published else 0
    written = figures(runs, epochs, evals, out / "figures")
    written += diagnostics_figures(diag, diag_epochs, out / "figures", out / "tables")
    written += sample_figures(runs, out / "figures" / "samples")
    return {"runs": len(runs), "evals": len(evals), "figures": written, "out": str(out),
            "published": n_published}
