"""The ``rws`` command: train | eval | datasets.

Every mistake the user can fix ends in one line on stderr naming the problem and the
fix, and exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from rws import allocator, stop
from rws.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus where to look), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _point_range(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), 0 <= A < B (B checked against the split later)."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (e.g. 5000:10000), got '{text}'") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"needs 0 <= A < B, got {a}:{b}")
    return a, b


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they show only when stderr is a terminal)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rws", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model with one method; writes a checkpoint "
                       "and a result record into --out (run again to resume)")
    t.add_argument("--data", default="binarized_mnist",
                   help="registered data set (see `rws datasets`) or a path to an .npz")
    t.add_argument("--model", default="sbn:200",
                   help="model spec, e.g. sbn:200, sbn:200-200-10, sbn/nade:200")
    t.add_argument("--method", default="rws",
                   help="training method: rws (default), ws, nvil, vimco, vae, iwae")
    t.add_argument("-K", "--samples", dest="K", type=_positive_int, default=None,
                   help="samples per data point per update (default: the method's, "
                        "5 for rws, vimco and iwae, 1 for ws, nvil and vae)")
    t.add_argument("--batch-size", type=_positive_int, default=100)
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate (default 1e-3); under --optimizer ema_momentum it "
                        "multiplies the minibatch-summed gradient, as in the original code")
    t.add_argument("--protocol", default="modern", choices=["modern", "ref"],
                   help="modern (default: Adam, sleep-Q in every update, best parameters "
                        "restored) or ref (the original RWS code: EMA momentum on summed "
                        "gradients, sleep every 2 steps, early stopping after at least 10 "
                        "epochs, last parameters tested, pixel permutation for DARN/NADE); "
                        "the options below override single knobs")
    t.add_argument("--optimizer", default=None,
                   help="adam, sgd or ema_momentum (default: the protocol's)")
    t.add_argument("--lr-p", type=float, default=None, help="wake-P learning rate (default --lr)")
    t.add_argument("--lr-q", type=float, default=None, help="wake-Q learning rate (default --lr)")
    t.add_argument("--lr-s", type=float, default=None,
                   help="sleep-Q learning rate (default --lr; needs --sleep-interleave >= 1 "
                        "when it differs from wake-Q's)")
    t.add_argument("--lr-decay", type=float, default=1.0,
                   help="learning rate / LR_DECAY^epoch, epochs from 0 (default 1: constant)")
    t.add_argument("--sleep-interleave", type=int, default=None, metavar="SI",
                   help="rws/ws: a sleep-Q update of its own every SI steps with SI x batch "
                        "dreams (0: sleep-Q in every update; default: the protocol's, "
                        "modern 0, ref 2)")
    t.add_argument("--min-epochs", type=int, default=None,
                   help="early stopping counts no failure up to this epoch (modern 0, ref 10)")
    t.add_argument("--restore-best", default=None, action=argparse.BooleanOptionalAction,
                   help="test the best-validated parameters (modern) or the last ones (ref)")
    t.add_argument("--permute-pixels", type=int, default=None, metavar="SEED",
                   help="a fixed pixel permutation of every split from SEED, -1 for none "
                        "(default: the protocol's; ref: 23 for DARN/NADE models)")
    t.add_argument("--grad-precision", default="float32",
                   help="float32 (default) or bfloat16: weight gradients of SBN layers from "
                        "bfloat16 products, faster on CPUs and GPUs with bfloat16 units; "
                        "the forward pass and every log-likelihood stay float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--valid-every", type=_positive_int, default=1,
                   help="validate every N epochs (default 1)")
    t.add_argument("--valid-k", type=_positive_int, default=100,
                   help="K of the validation log-likelihood (default 100)")
    t.add_argument("--patience", type=_positive_int, default=None,
                   help="stop after N validations without improvement (default 10, the "
                        "original code's lookahead when validating every epoch)")
    t.add_argument("--test-k", type=_positive_int, default=100,
                   help="K of the final test log-likelihood (default 100)")
    t.add_argument("--max-bad-steps", type=_positive_int, default=20,
                   help="stop after N non-finite steps in a row (default 20)")
    t.add_argument("--no-wake-q", dest="wake_q", action="store_const", const=False,
                   help="rws: no wake-phase update of Q")
    t.add_argument("--no-sleep-q", dest="sleep_q", action="store_const", const=False,
                   help="rws: no sleep-phase update of Q")
    t.add_argument("--n-dreams", type=_positive_int, default=None,
                   help="rws/ws: dreams per sleep update (default: the batch size)")
    t.add_argument("-O", "--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method, e.g. -O alpha=0.9 -O normalise=false "
                        "(nvil), -O analytic_kl=false (vae)")
    t.add_argument("--diagnose-every", type=int, default=0, metavar="N",
                   help="record gradient diagnostics (SNR, variance, ESS, KL) of the run's "
                        "estimators every N epochs on a fixed probe minibatch (default 0: off)")
    t.add_argument("--diagnose-r", type=_positive_int, default=10,
                   help="gradient draws per estimator for --diagnose-every (default 10)")
    t.add_argument("--out", required=True, help="output directory of the run")
    _add_common(t)

    e = sub.add_parser("eval", help="importance-sampled log-likelihood of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint.pt written by `rws train`")
    e.add_argument("-K", "--samples", dest="K", type=_positive_int, default=5000,
                   help="importance samples per point (default 5000)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--rows", type=_positive_int, default=None,
                   help="proposals scored per forward pass (memory bound)")
    e.add_argument("--json", dest="json_out", default=None,
                   help="where to write the eval record (default: eval-SPLIT-KK.json beside "
                        "the checkpoint, which `rws report` reads)")
    e.add_argument("--no-save", action="store_true", help="print only, write no eval record")
    e.add_argument("--points", type=_point_range, default=None, metavar="A:B",
                   help="points A to B-1 of the split only: a shard, drawn from seed + A (so "
                        "0:B gives the whole evaluation's first B points), its record "
                        "eval-SPLIT-KK-pointsA-B.json; `rws report` joins shards that cover "
                        "the split into one test (run shards side by side on idle cores)")
    _add_common(e)

    g = sub.add_parser("diagnose", help="bias, variance and signal-to-noise of every method's "
                       "gradient estimators at a checkpoint's parameters, across K")
    g.add_argument("checkpoints", nargs="+",
                   help="checkpoint.pt files, or directories searched for them (a sweep's "
                        "output directory diagnoses every run in it)")
    g.add_argument("-K", "--samples", dest="K", type=_positive_int, nargs="+",
                   default=[1, 2, 5, 10, 25, 50], help="sample counts (default 1 2 5 10 25 50)")
    g.add_argument("-R", "--draws", dest="R", type=_positive_int, default=100,
                   help="gradient draws per estimator and K (default 100)")
    g.add_argument("--batch", type=_positive_int, default=100,
                   help="points of the fixed minibatch: the first of --split (default 100)")
    g.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    g.add_argument("--methods", default=None,
                   help="comma-separated subset of rws, ws, nvil, vimco, vae, iwae "
                        "(default: every one that applies to the model)")
    g.add_argument("--reference-k", type=_positive_int, default=1000,
                   help="K of the reference direction where the model is too large to "
                        "enumerate (default 1000)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None,
                   help="the record to write (default: diagnostics.json beside the checkpoint)")
    _add_common(g)

    x = sub.add_parser("export", help="the parameters a run tests (model state only, a few "
                       "MB), loadable by `rws eval` without the training state")
    x.add_argument("checkpoint", help="a checkpoint.pt written by `rws train`")
    x.add_argument("--out", required=True, help="where to write the model file (.pt)")
    x.add_argument("--debug", action="store_true")

    s = sub.add_parser("samples", help="a picture of a trained model on image data: dreams "
                       "from P beside data points and their reconstructions through Q then P")
    s.add_argument("checkpoint", help="a checkpoint.pt written by `rws train` (or rws export)")
    s.add_argument("--out", required=True, help="the picture to write, e.g. samples.png")
    s.add_argument("--binary", action="store_true",
                   help="binary samples instead of the data layer's pixel probabilities")
    s.add_argument("-n", type=_positive_int, default=64, help="images per panel (default 64)")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"],
                   help="where the data points come from (default test)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--debug", action="store_true")

    w = sub.add_parser("sweep", help="run a grid of training runs from a TOML/YAML config; "
                       "run again to complete what is missing")
    w.add_argument("config", help="sweep config (see configs/*.toml)")
    w.add_argument("--out", default=None, help="output directory (default: the config's out)")
    w.add_argument("--workers", type=_positive_int, default=1,
                   help="runs at a time (local processes or Dask workers)")
    w.add_argument("--scheduler", default=None,
                   help="run on Dask: 'local' for a local cluster of worker processes, or a "
                        "scheduler address such as tcp://host:8786")
    w.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    w.add_argument("--debug", action="store_true")

    b = sub.add_parser("bench", help="seconds per epoch and achieved FLOP rate against the "
                       "machine's matmul rate, per method; Pyro side by side if installed")
    b.add_argument("--quick", action="store_true", help="three cases and fewer steps")
    b.add_argument("--no-pyro", action="store_true", help="skip the Pyro comparison")
    b.add_argument("--only", default=None, metavar="NAMES",
                   help="comma-separated substrings: only the cases whose names hold one "
                        "(e.g. 'nade,darn', 'B=25', 'eval'); no Pyro comparison")
    b.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed repeats of each training case, taken in turns (default 5; "
                        "more steady the paired batch-25/batch-100 ratio on a shared machine)")
    b.add_argument("--json", dest="json_out", default=None, help="also write the table here")
    _add_common(b)

    r = sub.add_parser("report", help="tables (Markdown, CSV) and figures (PNG, SVG) from "
                       "result records")
    r.add_argument("paths", nargs="+", help="directories (searched recursively) or record files")
    r.add_argument("--out", default="results/report", help="output directory")
    r.add_argument("--published", default=None,
                   help="published numbers to print beside ours (default: "
                        "results/published.toml where it exists; 'none' for no such table)")
    r.add_argument("--debug", action="store_true")

    g = sub.add_parser("progress", help="the unfinished work below result directories: runs "
                       "still training, cells that could not run, evaluations under way")
    g.add_argument("paths", nargs="*", default=["results/runs"],
                   help="directories searched recursively (default: results/runs)")
    g.add_argument("--all", action="store_true", help="finished runs too")
    g.add_argument("--debug", action="store_true")

    d = sub.add_parser("datasets", help="list the registered data sets")
    d.add_argument("--debug", action="store_true")
    return parser


def _bars(args) -> bool:
    """Progress bars only on a terminal: in a pipe, a log file or CI the training loop
    prints one line per epoch instead."""
    return not args.no_progress and sys.stderr.isatty()


def _literal(text: str):
    """'true'/'false' -> bool, numbers -> int/float, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def cmd_train(args) -> None:
    from rws.train import TrainConfig, train
    options = {k: getattr(args, k) for k in ("wake_q", "sleep_q", "n_dreams")
               if getattr(args, k) is not None}
    for item in args.method_option:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"-O expects KEY=VALUE, got '{item}'")
        options[key.strip()] = _literal(value.strip())
    cfg = TrainConfig(data=args.data, model=args.model, method=args.method, K=args.K,
                      batch_size=args.batch_size, epochs=args.epochs, lr=args.lr,
                      optimizer=args.optimizer, seed=args.seed, device=args.device,
                      threads=args.threads, valid_every=args.valid_every,
                      valid_k=args.valid_k, patience=args.patience, test_k=args.test_k,
                      max_bad_steps=args.max_bad_steps, progress=_bars(args),
                      grad_precision=args.grad_precision, method_options=options,
                      protocol=args.protocol, lr_p=args.lr_p, lr_q=args.lr_q, lr_s=args.lr_s,
                      lr_decay=args.lr_decay, sleep_interleave=args.sleep_interleave,
                      min_epochs=args.min_epochs, restore_best=args.restore_best,
                      permute_pixels=args.permute_pixels, diagnose_every=args.diagnose_every,
                      diagnose_r=args.diagnose_r)
    record = train(cfg, args.out, log=lambda line: print(line, flush=True))   # a line an epoch
    print(f"record: {Path(args.out) / 'record.json'}")
    t = record["test"]
    print(f"test log-likelihood (K={t['K']}): {t['ll']:.3f} +- {t['se']:.3f} nats")


def cmd_eval(args) -> None:
    import torch

    from rws import results
    from rws.train import evaluate, load_tested, resolve_device
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    run = load_tested(args.checkpoint, device)
    cfg, x, model, epoch = run.state["config"], run.splits[args.split], run.model, run.epoch
    name, shard, seed = f"eval-{args.split}-K{args.K}", {}, args.seed
    if args.points:                  # a shard: points A..B-1, drawn from seed + A
        (a, b), n = args.points, x.shape[0]
        if b > n:
            raise UserError(f"--points {a}:{b} reaches past the {args.split} split's {n:,} "
                            f"points; give A:B with B <= {n}")
        name, shard, seed = f"{name}-points{a}-{b}", {"points": [a, b], "split_points": n}, seed + a
        x = x[a:b]
    path = Path(args.json_out or Path(args.checkpoint).parent / f"{name}.json")
    if args.no_save:
        r = evaluate(model, x, args.K, seed, device, _bars(args), args.split, args.rows)
    else:
        r = _resumable_eval(args, run, x, seed, shard, path, device)
    print(f"{cfg['data']}/{args.split} {cfg['model']} ({cfg['method']}, epoch {epoch}): {r}"
          f"  [{r.seconds:.1f} s]")
    if not args.no_save:
        results.write_json(path, {
            **r.summary(), "split": args.split, **shard, "checkpoint": str(args.checkpoint),
            "epoch": epoch,
            "config": cfg, "seed": args.seed, "environment": results.environment(device),
            "per_point": r.per_point_list(), "ess": r.ess.tolist()})
        _partial(path).unlink(missing_ok=True)       # the record holds it all now
        print(f"eval record: {path}")


def _partial(record: Path) -> Path:
    """Where an unfinished evaluation keeps its progress: beside its record."""
    return record.with_name(record.stem + ".partial.pt")


class EvalProgressLines:
    """What a progress bar shows, as a line every ``every`` seconds, for an evaluation
    whose stderr is not a terminal (``nohup rws eval ... &``): points done, hours so far
    (earlier attempts included) and the hours left at this process's rate."""

    every = 600.0

    def __init__(self, resume: dict | None):
        self.start_done = resume["done"] if resume else 0
        self.start_seconds = resume["seconds"] if resume else 0.0
        self.last = time.monotonic()

    def update(self, progress: dict) -> None:
        if time.monotonic() - self.last < self.every or progress["done"] == self.start_done:
            return
        self.last = time.monotonic()
        print(self.line(progress), flush=True)

    def line(self, progress: dict) -> str:
        done, N, seconds = progress["done"], progress["N"], progress["seconds"]
        per_point = (seconds - self.start_seconds) / (done - self.start_done)
        left = per_point * (N - done) / 3600
        return (f"eval: {done:,} of {N:,} points ({done / N:.1%}), {seconds / 3600:.2f} h so "
                f"far, about {left:.1f} h to go")


def _resumable_eval(args, run, x, seed: int, shard: dict, path: Path, device):
    """``rws eval`` of x (the split, or the shard ``shard`` names: its record's and
    progress key's ``points``) drawn from ``seed``, that saves its progress beside its
    record every minute (``eval-SPLIT-KK.partial.pt``) and continues from it when the
    same command runs again, so an evaluation of hours survives an interruption."""
    import hashlib

    from rws import estimate, results
    from rws.layers.bernoulli import SAMPLER
    from rws.train import evaluate
    partial = _partial(path)
    results.ensure_writable_dir(path.parent)
    lock = results.lock_run_dir(path.parent, f".{path.stem}.lock", what=f"the evaluation {path}",
                                fix="wait for it to finish, or stop it, or pass another --json")
    try:
        digest = hashlib.sha256()
        for name, t in run.model.state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        rows = args.rows or estimate.default_rows(run.model)
        key = {"params": digest.hexdigest(), "split": args.split, "seed": args.seed,
               "K": args.K, "rows": rows, "sampler": SAMPLER, **shard}
        resume = None
        if partial.exists():
            saved = results.load_checkpoint(partial, required=("key", "progress"))
            if saved["key"] != key:
                diff = ", ".join(f"{k} {saved['key'].get(k)} (now {v})" for k, v in key.items()
                                 if saved["key"].get(k) != v and k != "params")
                raise UserError(f"{partial} holds an unfinished evaluation of "
                                f"{diff or 'other parameters'}; rerun that command to finish "
                                "it, or delete the file to start this one afresh")
            resume = saved["progress"]
            print(f"continuing the evaluation from {partial}: {resume['done']:,} of "
                  f"{resume['N']:,} points done", flush=True)

        lines = None if _bars(args) or args.no_progress else EvalProgressLines(resume)

        def snapshot(progress: dict) -> None:
            results.save_checkpoint(partial, {"key": key, "progress": progress})
            if lines is not None:
                lines.update(progress)

        return evaluate(run.model, x, args.K, seed, device,
                        _bars(args), args.split, rows, resume=resume, snapshot=snapshot)
    finally:
        lock.release()


def cmd_diagnose(args) -> None:
    import torch

    from rws import diagnostics, results
    from rws.train import load_tested
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [f for p in map(Path, args.checkpoints)
             for f in ([p] if p.is_file() or not p.exists() else sorted(p.rglob("checkpoint.pt")))]
    if not paths:
        raise UserError(f"no checkpoint.pt below {', '.join(args.checkpoints)}")
    if args.out and len(paths) > 1:
        raise UserError("--out names one record, but there are several checkpoints; drop "
                        "--out to write diagnostics.json beside each")
    names = args.methods.split(",") if args.methods else None
    for path in paths:
        run = load_tested(path)
        state, cfg, model, epoch = run.state, run.cfg, run.model, run.epoch
        x = run.splits[args.split][:args.batch]
        own = {cfg.method: state["method"]} if state.get("method") else None
        print(f"{path}: {cfg.model} ({cfg.method}, K={cfg.K}), epoch {epoch}, "
              f"{x.shape[0]} {args.split} points, R={args.R}", flush=True)
        out = diagnostics.diagnose(model, x, args.K, args.R, names, args.seed,
                                   reference_k=args.reference_k, own_states=own,
                                   log=lambda line: print("  " + line, flush=True))
        record = {**out, "checkpoint": str(path), "config": state["config"], "epoch": epoch,
                  "split": args.split, "seed": args.seed,
                  "environment": results.environment("cpu")}
        target = Path(args.out) if args.out else path.parent / "diagnostics.json"
        results.write_json(target, record)
        print(f"diagnostics record: {target}")


def cmd_export(args) -> None:
    from rws import results
    from rws.train import tested_parameters
    state = results.load_checkpoint(args.checkpoint)
    params, epoch = tested_parameters(state)
    results.save_checkpoint(Path(args.out), {"config": state["config"], "model": params,
                                             "epoch": epoch})
    print(f"{args.out}: {state['config']['model']} ({state['config']['method']}), "
          f"parameters of epoch {epoch}, {Path(args.out).stat().st_size / 1e6:.1f} MB")


def cmd_samples(args) -> None:
    from rws.samples import from_checkpoint
    title = from_checkpoint(args.checkpoint, args.out, args.n, args.binary, args.split, args.seed)
    print(f"{args.out}: {title}")


def cmd_sweep(args) -> None:
    from rws import sweep
    config = sweep.load_config(args.config)
    if args.dry_run:
        for cfg in sweep.expand(config):
            print(sweep.cell_id(cfg))
        return
    summaries = sweep.run(config, args.out, args.workers, args.scheduler)
    failed = [s for s in summaries if s["status"] == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(summaries)} cells failed (each has an "
                        "error.json in its directory); the others finished")


def cmd_bench(args) -> None:
    import torch

    from rws import bench, results
    from rws.train import resolve_device
    if args.threads:
        torch.set_num_threads(args.threads)
    out = bench.run(resolve_device(args.device), quick=args.quick, pyro=not args.no_pyro,
                    only=args.only, repeats=args.repeats)
    if args.json_out:
        results.write_json(Path(args.json_out), {**out, "environment": results.environment(args.device)})


def cmd_report(args) -> None:
    from rws.report import report
    published = args.published
    if published is None:
        published = "results/published.toml" if Path("results/published.toml").exists() else None
    elif published == "none":
        published = None
    summary = report(args.paths, args.out, published)
    print(f"{summary['runs']} runs, {summary['evals']} eval records -> {summary['out']}/tables, "
          f"{summary['out']}/figures ({', '.join(summary['figures'])})"
          + (f"; {summary['published']} published numbers beside ours ({published})"
             if published else ""))


def cmd_progress(args) -> None:
    from rws.report import markdown_table, progress_rows
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise UserError(f"{', '.join(missing)}: no such directory; give the directories that "
                        "hold the runs (rws sweep's out, rws train's --out)")
    rows = progress_rows(args.paths)
    if not rows.empty and not args.all:
        rows = rows[rows.status != "finished"]
    if rows.empty:
        print(f"nothing {'' if args.all else 'unfinished '}below {', '.join(args.paths)}")
        return
    print(markdown_table(rows.dropna(axis=1, how="all")))


def cmd_datasets(args) -> None:
    from rws.data import REGISTRY
    print(f"{'name':28s} {'dim':>5s} {'train':>7s} {'valid':>7s} {'test':>7s}  source")
    for info in REGISTRY.values():
        tr, va, te = info.sizes
        print(f"{info.name:28s} {info.dim:5d} {tr:7d} {va:7d} {te:7d}  {info.source}")


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "diagnose": cmd_diagnose,
            "export": cmd_export, "samples": cmd_samples,
            "sweep": cmd_sweep,
            "bench": cmd_bench,
            "report": cmd_report,
            "progress": cmd_progress,
            "datasets": cmd_datasets}


_python_warning = warnings.formatwarning
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The suite's own warnings as one line, like its errors (others keep their source)."""
    if issubclass(category, UserWarning) and str(filename).startswith(_PACKAGE_DIR + os.sep):
        return f"rws: warning: {message}\n"
    return _python_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    allocator.retain_freed_memory()
    warnings.formatwarning = _one_line_warning
    if args.command in ("train", "eval"):     # not sweeps: their pool waits for its cells
        stop.install()
    try:
        COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"rws: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:      # output piped into head and the like
        return 0
    except KeyboardInterrupt:
        print("rws: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected fault: one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"rws: internal error: {type(e).__name__}: {e} (run again with --debug for "
                  "the traceback, and please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
