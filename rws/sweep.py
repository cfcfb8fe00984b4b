"""Grids of runs: data sets x models x methods x K x seeds, one isolated run per cell.

A sweep config (TOML, or YAML when PyYAML is installed)::

    name = "k_sensitivity"
    out = "results/runs/k_sensitivity"      # optional; default runs/<name>

    [defaults]                              # any `rws train` option (TrainConfig field)
    epochs = 20
    test_k = 1000

    [grid]                                  # lists: every combination is a cell
    data = ["binarized_mnist"]
    model = ["sbn:200", "sbn:200-200"]
    K = [1, 2, 5, 10, 25, 50]
    seed = [0]

    [[cells]]                               # optional: variants, each crossed with [grid]
    method = "rws"
    method_options = {wake_q = false}

With [[cells]], the cells are every entry crossed with every [grid] combination;
without, they are the [grid] combinations. Identical cells run once.

Each cell writes its checkpoint and record into ``out/<cell id>``. A cell whose record
says "finished" is skipped, so an interrupted sweep run again completes only what is
missing; a cell that fails writes ``error.json`` (the error and its traceback) and the
others go on. Cells run on an executor: local worker processes by default, or a Dask
cluster (``scheduler="local"`` for a local one of worker processes, or an address).
Every run is pinned to ``threads`` torch threads (default 1) so timings are comparable.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import time
import traceback
from pathlib import Path

from rws import data as datasets
from rws import methods, protocol, results, zoo
from rws.errors import UserError
from rws.train import RECORD, RESUMABLE_CHANGES, TrainConfig, Trainer

FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
ERROR = "error.json"


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"sweep config {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError("YAML sweep configs need PyYAML (pip install pyyaml); "
                                "or write the config in TOML") from None
            config = yaml.safe_load(text)
        else:
            import tomllib
            config = tomllib.loads(text)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"sweep config {path} cannot be parsed ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"sweep config {path} must be a table of settings")
    return config


def _check_keys(where: str, table: dict) -> None:
    unknown = sorted(set(table) - FIELDS)
    if unknown:
        raise UserError(f"sweep config: unknown setting(s) {unknown} in {where}; "
                        f"known: {', '.join(sorted(FIELDS))}")


def expand(config: dict) -> list[TrainConfig]:
    """The cells of a sweep config, each a checked TrainConfig (bad cells raise before
    anything runs)."""
    extra = sorted(set(config) - {"name", "out", "defaults", "grid", "cells", "description"})
    if extra:
        raise UserError(f"sweep config: unknown section(s) {extra}; use name, out, "
                        "description, defaults, grid and cells")
    defaults = {"threads": 1, "progress": False, **config.get("defaults", {})}
    _check_keys("[defaults]", defaults)
    grid = config.get("grid", {})
    _check_keys("[grid]", grid)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep config: [grid] {key} must be a non-empty list, got {values!r}")
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else []
    for i, cell in enumerate(config.get("cells", [])):
        _check_keys(f"[[cells]] number {i + 1}", cell)
    explicit = config.get("cells", [])
    if explicit:   # each grid combination with each [[cells]] entry (the entry wins on a
        # clash), grid-major: the cells of the first model run first
        cells = [{**defaults, **g, **c} for g in (combos or [{}]) for c in explicit]
    else:
        cells = [{**defaults, **g} for g in combos]
    if not cells:
        raise UserError("sweep config has no cells: give a [grid] or [[cells]]")
    out, seen = [], set()
    for cell in cells:
        try:
            cfg = TrainConfig(**cell)
        except TypeError as e:
            raise UserError(f"sweep config: bad cell {cell}: {e}") from None
        validate(cfg, cell)
        if cell_id(cfg) not in seen:
            seen.add(cell_id(cfg))
            out.append(cfg)
    return out


def validate(cfg: TrainConfig, cell: dict) -> None:
    """Everything that can be checked without training: names, spec, numbers."""
    try:
        cfg.check()
        zoo.parse(cfg.model)
        methods.method_class(cfg.method)
        if not cfg.data.endswith(".npz"):
            datasets.lookup(cfg.data)
    except UserError as e:
        raise UserError(f"sweep config: cell {cell}: {e}") from None


# settings that a run may change when it is resumed (a larger epoch cap, a larger test
# K, ...) are not part of its identity: raising a config's cap continues its cells
_NOT_IDENTITY = RESUMABLE_CHANGES


def cell_id(cfg: TrainConfig) -> str:
    """A readable, unique directory name for a cell. Its digest covers the settings that
    differ from TrainConfig's defaults (the modern protocol's knobs resolved), so an option added to the suite later (at a
    default that reproduces what runs did before) leaves existing cells' ids, and hence
    their resumable directories, unchanged."""
    defaults = {**dataclasses.asdict(TrainConfig()), **protocol.resolved_defaults()}
    d = {k: v for k, v in dataclasses.asdict(cfg).items()
         if k not in _NOT_IDENTITY and v != defaults[k]}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    model = cfg.model.replace(":", "_").replace("/", "-").replace("[", "(").replace("]", ")")
    model = "".join(c if c.isalnum() or c in "-_()=," else "_" for c in model)
    return f"{cfg.data}-{model}-{cfg.method}-K{cfg.K}-s{cfg.seed}-{digest}"


def is_done(run_dir: Path, cfg: TrainConfig | None = None) -> bool:
    """The record says finished: stopped early, or at an epoch cap no lower than
    ``cfg.epochs`` (a config whose cap was raised continues the cell)."""
    try:
        rec = json.loads((run_dir / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if rec.get("status") != "finished":
        return False
    return (cfg is None or rec.get("stopped_by") == "early_stopping"
            or rec.get("epochs_done", 0) >= cfg.epochs)


def run_cell(cfg_dict: dict, run_dir: str) -> dict:
    """Train one cell in this process; never raises (failures become error.json)."""
    run_dir = Path(run_dir)
    cfg = TrainConfig(**cfg_dict)
    try:
        record = Trainer(cfg, run_dir).run(log=lambda *_: None)
        (run_dir / ERROR).unlink(missing_ok=True)
        return {"cell": run_dir.name, "status": "finished", "test_ll": record["test"]["ll"]}
    except BaseException as e:  # noqa: BLE001 - a cell's failure must not end the sweep
        results.write_json(run_dir / ERROR, {
            "cell": run_dir.name, "config": cfg_dict, "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()})
        return {"cell": run_dir.name, "status": "failed", "error": f"{type(e).__name__}: {e}"}


def _executor(workers: int, scheduler: str | None):
    """(submit, as_completed, close, in_flight) for local processes or a Dask cluster;
    ``in_flight``: how many cells to hand over at once (None: all of them)."""
    if scheduler is None:
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return pool.submit, cf.as_completed, pool.shutdown, None
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserError("--scheduler needs Dask: pip install 'dask[distributed]'") from None
    in_flight = None
    if scheduler == "local":
        import dask
        # A cell that kills its worker fails at the first death instead of being retried
        # on three more workers: each death costs a nanny restart, and a restart can race
        # the nanny's shutdown and leave no worker at all (dask/distributed#7312), which
        # hung this sweep's test about one run in five on a loaded machine. Dask counts a
        # death against every cell waiting in that worker's queue too, so the sweep hands
        # the local cluster one cell per worker at a time.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        client = Client(cluster)
        in_flight = workers

        def close():
            client.close()
            cluster.close()
    else:
        try:
            client = Client(scheduler, timeout=30)
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({e})") from None
        close = client.close
    # pure=False: a rerun of a cell is a new task, not a cached result
    return (lambda f, *a: client.submit(f, *a, pure=False)), as_completed, close, in_flight


def _duration(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def progress_line(done: int, total: int, elapsed: float) -> str:
    """'3/12 cells, 41 min, ETA 2 h 03 min': the rest at the pace so far (the cells of a
    sweep differ in cost, so this is rough until a few have finished)."""
    eta = elapsed / done * (total - done) if done else float("nan")
    return (f"{done}/{total} cells, {_duration(elapsed)}"
            + (f", ETA {_duration(eta)}" if done < total else ""))


def run(config: dict, out: str | Path | None = None, workers: int = 1,
        scheduler: str | None = None, log=print) -> list[dict]:
    """Run every missing cell of a sweep; returns one summary per cell."""
    cells = expand(config)
    out = Path(out or config.get("out") or Path("runs") / config.get("name", "sweep"))
    results.ensure_writable_dir(out)
    summaries, todo = [], []
    for cfg in cells:
        run_dir = out / cell_id(cfg)
        holder = results.lock_holder(run_dir)
        if is_done(run_dir, cfg):
            summaries.append({"cell": run_dir.name, "status": "skipped (finished before)"})
        elif holder:
            summaries.append({"cell": run_dir.name, "status": f"skipped (in use by {holder})"})
            log(f"  skipped  {run_dir.name}: in use by {holder}")
        else:
            todo.append((cfg, run_dir))
    finished = sum(s["status"].startswith("skipped (finished") for s in summaries)
    log(f"sweep {config.get('name', '')}: {len(cells)} cells, {finished} finished before, "
        f"{len(cells) - finished - len(todo)} in use elsewhere, {len(todo)} to run -> {out}")
    if todo:
        submit, as_completed, close, in_flight = _executor(workers, scheduler)
        done, t0 = 0, time.monotonic()
        waiting, futures = list(todo), {}

        def hand_over():
            cfg, d = waiting.pop(0)
            fut = submit(run_cell, dataclasses.asdict(cfg), str(d))
            futures[fut] = (cfg, d)
            return fut

        try:
            finishing = as_completed([hand_over() for _ in range(min(in_flight or len(todo),
                                                                      len(todo)))])
            for fut in finishing:
                if waiting:          # only with in_flight, whose as_completed takes more
                    finishing.add(hand_over())
                try:
                    s = fut.result()
                except Exception as e:  # the worker itself died (killed, out of memory)
                    cfg, d = futures[fut]
                    s = {"cell": d.name, "status": "failed",
                         "error": f"worker died: {type(e).__name__}: {e}"}
                    results.write_json(d / ERROR, {**s, "config": dataclasses.asdict(cfg)})
                summaries.append(s)
                done += 1
                tail = f"test log p^ {s['test_ll']:.2f}" if "test_ll" in s else s.get("error", "")
                log(f"  {s['status']:8s} {s['cell']}  {tail}  "
                    f"[{progress_line(done, len(todo), time.monotonic() - t0)}]")
        finally:
            close()
    return summaries
