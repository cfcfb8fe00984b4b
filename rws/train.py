"""One training loop for every method.

Epochs over shuffled minibatches; Adam by default; the validation log-likelihood
log p^_K at ``valid_k`` every ``valid_every`` epochs; early stopping after ``patience``
validations without improvement, restoring the best parameters; a checkpoint and the
run's record written atomically after every epoch, so the same command resumes a run
that was killed; the wall-clock seconds of each epoch's training steps (evaluation
excluded) recorded. A step whose loss or gradient is not finite is skipped and counted;
after ``max_bad_steps`` of them in a row the run stops, keeping its last good checkpoint.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rws import allocator, bf16, estimate, methods, protocol, results, stop, zoo
from rws import data as datasets
from rws.errors import UserError
from rws.optim import OPTIMIZERS, SUMMED_GRADIENT

CHECKPOINT = "checkpoint.pt"
RECORD = "record.json"

# Config keys that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {"epochs", "device", "threads", "progress", "test_k", "max_bad_steps",
                     "diagnose_every", "diagnose_r",
                     "patience"}


@dataclass
class TrainConfig:
    data: str = "binarized_mnist"
    model: str = "sbn:200"
    method: str = "rws"
    K: int | None = None        # samples per point per update; None: the method's default
    batch_size: int = 100
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str | None = None   # None: the protocol's (adam; ref: ema_momentum)
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    valid_every: int = 1
    valid_k: int = 100
    patience: int | None = None    # validations without improvement before stopping (10)
    test_k: int = 100
    max_bad_steps: int = 20
    progress: bool = True
    grad_precision: str = "float32"  # or "bfloat16": weight gradients of SBN layers (rws.bf16)
    method_options: dict = field(default_factory=dict)  # e.g. {"wake_q": False}
    # the protocol and its knobs (rws.protocol); None takes the protocol's value
    protocol: str = "modern"       # or "ref": the original RWS code's training
    lr_p: float | None = None      # wake-P learning rate (None: lr)
    lr_q: float | None = None      # wake-Q learning rate (None: lr)
    lr_s: float | None = None      # sleep-Q learning rate (None: lr; in every update: lr_q)
    lr_decay: float = 1.0          # lr / lr_decay^e in epoch e (from 0)
    sleep_interleave: int | None = None  # 0: sleep-Q in every update; si: own update every si steps
    min_epochs: int | None = None  # no early-stopping failure counted up to this epoch
    restore_best: bool | None = None   # test the best-validated parameters (else the last)
    permute_pixels: int | None = None  # seed of a fixed pixel permutation; -1: none
    diagnose_every: int = 0        # record gradient diagnostics every N epochs (0: never)
    diagnose_r: int = 10           # draws per estimator for those diagnostics

    def check(self) -> None:
        if self.K is None:
            self.K = methods.method_class(self.method).default_K
        if self.protocol not in protocol.PROTOCOLS:
            raise UserError(f"unknown protocol '{self.protocol}'; choose one of: "
                            f"{', '.join(protocol.PROTOCOLS)}")
        protocol.resolve(self)
        for name in ("K", "batch_size", "epochs", "valid_every", "valid_k", "test_k",
                     "patience", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "lr_p", "lr_q", "lr_s", "lr_decay"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UserError(f"{name.replace('_', ' ')} must be a positive number, got {value}")
        if self.diagnose_r < 2:
            raise UserError(f"diagnose_r must be >= 2 (a variance needs two draws), got "
                            f"{self.diagnose_r}")
        for name in ("sleep_interleave", "min_epochs", "diagnose_every"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.permute_pixels < -1:
            raise UserError(f"permute_pixels is a seed >= 0, or -1 for none; got {self.permute_pixels}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer '{self.optimizer}'; choose one of: "
                            f"{', '.join(OPTIMIZERS)}")
        if self.sleep_interleave == 0 and self.lr_s is not None and self.lr_s != self.q_lr:
            raise UserError("a sleep-Q learning rate other than wake-Q's needs sleep-Q as an "
                            "update of its own: add --sleep-interleave 1 (or more)")
        if self.grad_precision not in bf16.PRECISIONS:
            raise UserError(f"unknown grad precision '{self.grad_precision}'; choose one of: "
                            f"{', '.join(bf16.PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")

    @property
    def p_lr(self) -> float:
        return self.lr if self.lr_p is None else self.lr_p

    @property
    def q_lr(self) -> float:
        return self.lr if self.lr_q is None else self.lr_q

    @property
    def s_lr(self) -> float:
        return self.lr if self.lr_s is None else self.lr_s

    def resolved(self) -> "TrainConfig":
        """A checked copy (the protocol's knobs filled in)."""
        cfg = dataclasses.replace(self, method_options=dict(self.method_options))
        cfg.check()
        return cfg

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a record's or checkpoint's config (fields added since hold their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def micro_batch_size(model, K: int, batch_size: int) -> int:
    """Points per forward/backward pass: K samples of each must fit the cache-sized row
    budget of ``estimate.default_rows``; larger batches accumulate gradients over several
    passes (the same gradient, computed in cache)."""
    return min(batch_size, max(1, estimate.default_rows(model) // K))


def train_step(method, optimizer, x, generator, micro: int, grad_precision: str = "float32"):
    """One update from minibatch x [B, D]: the mean surrogate loss over the minibatch,
    back-propagated in micro-batches of ``micro`` points. Returns (stepped, train_ll):
    a step whose loss or gradient is not finite is not applied. ``grad_precision``
    "bfloat16": binary-input layers' weight gradients from bfloat16 products (rws.bf16)."""
    optimizer.zero_grad(set_to_none=True)
    B = x.shape[0]
    with bf16.weight_gradients(grad_precision == "bfloat16"):
        if B <= micro:      # one pass (the bookkeeping of several: 2% of a batch-25 step)
            finite, stats = method.backward(x, generator, 1.0)
            ll = stats["train_ll"].detach().double()
        else:
            ll = torch.zeros((), dtype=torch.float64, device=x.device)
            finite = torch.ones((), dtype=torch.bool, device=x.device)
            for xs in x.split(micro):
                step_finite, stats = method.backward(xs, generator, xs.shape[0] / B)
                finite &= step_finite      # the loss and the gradient (``Method.backward``)
                ll += stats["train_ll"].detach() * (xs.shape[0] / B)
    if not bool(finite):
        return False, ll
    optimizer.step()
    return True, ll


def sleep_step(method, optimizer, n: int, generator, lr: float) -> bool:
    """One sleep-Q update of its own (``TrainConfig.sleep_interleave`` > 0): the gradient
    of -log q on n dreams, applied to Q alone at learning rate ``lr`` (P's parameters get
    no gradient, so the optimiser leaves them and their state alone). Returns whether it
    was applied (its gradient finite)."""
    optimizer.zero_grad(set_to_none=True)
    if not bool(method.sleep_backward(n, generator)):
        return False
    q_group = next(g for g in optimizer.param_groups if g.get("name") == "q")
    wake_lr, q_group["lr"] = q_group["lr"], lr
    optimizer.step()
    q_group["lr"] = wake_lr
    return True


def load_splits(cfg: "TrainConfig") -> dict[str, torch.Tensor]:
    """The data of a run: its data set with the run's fixed pixel permutation applied
    to every split (``permute_pixels`` >= 0, the original code's PermuteColumns; the
    order in which autoregressive layers visit the pixels)."""
    splits = datasets.get(cfg.data)
    perm = pixel_permutation(cfg, splits["train"].shape[1])
    return splits if perm is None else {k: v[:, perm] for k, v in splits.items()}


def pixel_permutation(cfg: "TrainConfig", dim: int) -> torch.Tensor | None:
    """The run's fixed permutation of the dim pixels (column j of its data is pixel
    perm[j]), or None."""
    if cfg.permute_pixels is None or cfg.permute_pixels < 0:
        return None
    return torch.randperm(dim, generator=torch.Generator().manual_seed(cfg.permute_pixels))


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; "
                        "use --device cpu")
    return device


def build_run(cfg: TrainConfig, n_data: int, device: torch.device):
    """The model (initialised from cfg.seed) and its method."""
    torch.manual_seed(cfg.seed)
    model = zoo.build(cfg.model, n_data).to(device)
    method = methods.build(cfg.method, model, cfg.K, **cfg.method_options).to(device)
    return model, method


def evaluate(model, x, K, seed, device, progress=False, desc="eval", rows=None, **resumable):
    """log p^_K on x with an evaluation generator of its own (the same draws each call);
    ``resumable``: estimate.log_likelihood's resume and snapshot."""
    g = torch.Generator(device=device).manual_seed(seed)
    return estimate.log_likelihood(model, x, K, generator=g, rows=rows, device=device,
                                   progress=progress, desc=desc, **resumable)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path):
        cfg.check()
        allocator.retain_freed_memory()
        self.cfg, self.out = cfg, Path(out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if cfg.grad_precision == "bfloat16" and not bf16.native(self.device):
            warnings.warn(f"{self.device} has no bfloat16 units: --grad-precision bfloat16 "
                          "is emulated here and slower than float32", stacklevel=2)
        results.ensure_writable_dir(self.out)
        self.lock = results.lock_run_dir(self.out)     # one process per run directory
        try:
            self._setup(cfg)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, cfg: TrainConfig) -> None:
        self.splits = load_splits(cfg)
        n_train, n_data = self.splits["train"].shape
        if cfg.batch_size > n_train:
            raise UserError(f"batch size {cfg.batch_size} is larger than the {n_train} "
                            f"training points of '{cfg.data}'; use --batch-size {n_train} or less")
        self.train_x = self.splits["train"].to(self.device)
        self.model, self.method = build_run(cfg, n_data, self.device)
        self.method.separate_sleep = self.method.sleep_phase and cfg.sleep_interleave > 0
        self.optimizer = OPTIMIZERS[cfg.optimizer](
            self.method.param_groups(cfg.lr, cfg.p_lr, cfg.q_lr))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.n_dreams = (cfg.method_options.get("n_dreams")
                         or cfg.sleep_interleave * cfg.batch_size)   # per sleep update
        self.steps_done = 0            # updates applied (the sleep schedule counts them)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.epoch = 0                 # epochs completed
        self.history: list[dict] = []
        self.best = {"valid_ll": -math.inf, "epoch": 0, "model": None, "method": None}
        self.fails = 0                 # validations without improvement
        self.status = "running"
        self.stopped_by = None         # "early_stopping" or "max_epochs" once finished
        self.total_skipped = 0
        self.record_base = {
            "schema": results.RECORD_SCHEMA,
            "config": dataclasses.asdict(cfg),
            "seed": cfg.seed,
            "model": {"spec": self.model.spec, "sizes": self.model.sizes,
                      "parameters": sum(p.numel() for p in self.model.parameters())},
            "data": {"name": cfg.data, "train": n_train, "dim": n_data,
                     "valid": len(self.splits["valid"]), "test": len(self.splits["test"])},
        }
        # the code this process runs was loaded now: its commit, not that of a later save
        self.environment = results.environment(self.device)
        self.sessions: list[dict] = []    # each process that trained it: from which epoch, what code
        self._resume_if_possible()
        self.sessions.append({"from_epoch": self.epoch,
                              "git_commit": self.environment["git_commit"]})

    # -- checkpoints -------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(),
            "method": self.method.own_state(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "fails": self.fails,
            "status": self.status,
            "stopped_by": self.stopped_by,
            "total_skipped": self.total_skipped,
            "steps_done": self.steps_done,
            "sample_gen": self.sample_gen.get_state(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "sessions": self.sessions,
        }

    def _resume_if_possible(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            self._keep_record_without_checkpoint()
            return
        state = results.load_checkpoint(path, map_location=self.device)
        # a field added since the run began holds its default, which is what the run did
        old = dataclasses.asdict(TrainConfig.from_dict(state["config"]).resolved())
        new = dataclasses.asdict(self.cfg)
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            raise UserError(f"{self.out} holds a run with a different config ({diffs}); "
                            "use another --out, or the same options to resume it")
        self.model.load_state_dict(state["model"])
        self.method.load_own_state(state["method"])
        self.optimizer.load_state_dict(_split_model_group(state["optimizer"],
                                                          self.optimizer.state_dict()))
        self.epoch, self.history = state["epoch"], state["history"]
        self.best, self.fails = state["best"], state["fails"]
        self.status, self.total_skipped = state["status"], state["total_skipped"]
        self.stopped_by = state["stopped_by"]
        self.steps_done = state.get("steps_done", 0)
        self.sample_gen.set_state(state["sample_gen"].cpu() if self.device.type == "cpu"
                                  else state["sample_gen"])
        self.shuffle_gen.set_state(state["shuffle_gen"].cpu())
        self.sessions = state.get("sessions", [])
        self.resumed_from = self.epoch

    def _keep_record_without_checkpoint(self) -> None:
        """A record with no checkpoint beside it (the checkpoint was deleted, or the record
        came from a clean checkout, where checkpoints are not committed) cannot be resumed:
        the run starts again at epoch 0, and the old record is kept beside it as
        ``record.superseded-<UTC time>.json`` instead of being overwritten."""
        old = self.out / RECORD
        if not old.exists():
            return
        try:
            done = results.read_json(old).get("epochs_done", "?")
        except UserError:           # a truncated record is kept all the same
            done = "?"
        kept = old.with_name(time.strftime("record.superseded-%Y%m%dT%H%M%SZ.json", time.gmtime()))
        old.rename(kept)
        warnings.warn(f"{self.out} has a record ({done} epochs) but no {CHECKPOINT}, so it cannot "
                      f"resume: the run starts again at epoch 0 and the old record is kept as "
                      f"{kept.name}", stacklevel=3)

    def _save(self, extra: dict | None = None, checkpoint: bool = True) -> dict:
        record = {**self.record_base, "status": self.status, "epochs_done": self.epoch,
                  "epochs": self.history, "best_epoch": self.best["epoch"],
                  "best_valid_ll": self.best["valid_ll"], "skipped_steps": self.total_skipped,
                  "environment": self.environment, "sessions": self.sessions, **(extra or {})}
        if checkpoint:
            results.save_checkpoint(self.out / CHECKPOINT, self._state())
        results.write_json(self.out / RECORD, record)
        return record

    # -- one epoch -----------------------------------------------------------------
    def _train_epoch(self) -> dict:
        cfg = self.cfg
        N = self.train_x.shape[0]
        perm = torch.randperm(N, generator=self.shuffle_gen).to(self.device)
        n_batches = math.ceil(N / cfg.batch_size)
        micro = micro_batch_size(self.model, cfg.K, cfg.batch_size)
        self._set_learning_rates()
        sleep_lr = self.sleep_lr()
        ll_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = skipped = bad_run = sleep_skipped = 0
        bar = tqdm(range(n_batches), desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress, leave=False, unit="step")
        self.model.train()
        t0 = time.perf_counter()
        for i in bar:
            stop.check()                        # a kill that numba's compiler swallowed
            x = self.train_x[perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]].float()
            partial = x.shape[0] != cfg.batch_size and cfg.optimizer in SUMMED_GRADIENT
            if partial:      # the last, smaller minibatch: lr times its own size
                self._set_learning_rates(x.shape[0])
            stepped, ll = train_step(self.method, self.optimizer, x, self.sample_gen, micro,
                                     cfg.grad_precision)
            if partial:
                self._set_learning_rates()
            if not stepped:
                skipped += 1
                bad_run += 1
                if bad_run >= cfg.max_bad_steps:
                    self.status = "stopped_nonfinite"
                    break
                continue
            bad_run = 0
            ll_sum += ll
            steps += 1
            self.steps_done += 1
            if self.method.separate_sleep and self.steps_done % cfg.sleep_interleave == 0:
                if not sleep_step(self.method, self.optimizer, self.n_dreams,
                                  self.sample_gen, sleep_lr):
                    sleep_skipped += 1
            if i % 25 == 0 and cfg.progress:
                bar.set_postfix(train_ll=f"{float(ll_sum) / max(steps, 1):.2f}")
        seconds = time.perf_counter() - t0
        bar.close()
        metrics = {"epoch": self.epoch + 1, "train_ll": float(ll_sum) / max(steps, 1),
                   "seconds": seconds, "steps": steps, "skipped_steps": skipped + sleep_skipped,
                   "lr": self.optimizer.param_groups[0]["lr"] / self._sum_factor(cfg.batch_size)}
        return metrics

    # -- learning rates ------------------------------------------------------------
    def _sum_factor(self, n: int) -> float:
        """The optimiser's lr multiplies a summed gradient (``rws.optim``): the loop's
        mean gradient over n points takes lr n."""
        return float(n) if self.cfg.optimizer in SUMMED_GRADIENT else 1.0

    def _decay(self) -> float:
        return self.cfg.lr_decay ** -self.epoch       # lr / lr_decay^e, epochs from 0

    def _set_learning_rates(self, batch: int | None = None) -> None:
        f = self._decay() * self._sum_factor(batch or self.cfg.batch_size)
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * f

    def sleep_lr(self) -> float:
        return self.cfg.s_lr * self._decay() * self._sum_factor(self.n_dreams)

    # -- the run -----------------------------------------------------------------
    def run(self, log=print) -> dict:
        """Train to the epoch cap or early stopping, then test; releases the run directory."""
        try:
            return self._run(log)
        finally:
            self.lock.release()

    def _run(self, log) -> dict:
        cfg = self.cfg
        if self.status == "finished" and (self.stopped_by == "early_stopping"
                                          or self.epoch >= cfg.epochs):
            log(f"run in {self.out} already finished ({self.stopped_by} after epoch "
                f"{self.epoch}); its record is {self.out / RECORD}")
            return results.read_json(self.out / RECORD)
        if getattr(self, "resumed_from", None) is not None:
            log(f"resuming {self.out} after epoch {self.epoch}")
        self.status, self.stopped_by = "running", None   # a finished run given more epochs goes on
        while self.epoch < cfg.epochs and self.status == "running":
            metrics = self._train_epoch()
            if self.status == "stopped_nonfinite":
                self.total_skipped += metrics["skipped_steps"]
                # The record says why; the checkpoint stays that of the last good epoch.
                self._save({"error": f"{cfg.max_bad_steps} non-finite steps in a row"},
                           checkpoint=False)
                raise UserError(
                    f"stopped in epoch {self.epoch + 1}: {cfg.max_bad_steps} steps in a row had a "
                    f"non-finite loss or gradient; the last good checkpoint (epoch {self.epoch}) "
                    f"is kept in {self.out}. Try a smaller --lr")
            self.epoch += 1
            self.total_skipped += metrics["skipped_steps"]
            if self.epoch % cfg.valid_every == 0 or self.epoch == cfg.epochs:
                v = evaluate(self.model, self.splits["valid"], cfg.valid_k, cfg.seed + 7919,
                             self.device, cfg.progress, "valid")
                metrics.update(valid_ll=v.mean, valid_se=v.se, valid_k=cfg.valid_k,
                               valid_seconds=v.seconds)
                if v.mean > self.best["valid_ll"]:
                    self.best = {"valid_ll": v.mean, "epoch": self.epoch,
                                 "model": copy.deepcopy(self.model.state_dict()),
                                 "method": copy.deepcopy(self.method.own_state())}
                    self.fails = 0
                elif self.epoch <= cfg.min_epochs:
                    self.fails = 0             # no failure counted before min_epochs
                else:
                    self.fails += 1
                    if self.fails >= cfg.patience:
                        self.status, self.stopped_by = "early_stopped", "early_stopping"
            if cfg.diagnose_every and self.epoch % cfg.diagnose_every == 0:
                metrics["diagnostics"] = self._probe()
            self.history.append(metrics)
            log(format_epoch(metrics))
            self._save()
        return self.finish(log)

    def _probe(self) -> dict:
        """The run's own estimators on a fixed probe minibatch (the first 100 validation
        points), R = diagnose_r draws, a generator of its own (``rws.diagnostics``)."""
        from rws import diagnostics
        x = self.splits["valid"][:100].to(self.device)
        return diagnostics.probe(self.model, x, self.cfg.K, self.cfg.method,
                                 self.cfg.diagnose_r, seed=self.cfg.seed + 31337,
                                 own_state=self.method.own_state())

    def best_model(self):
        """The parameters that the run's test evaluates: those of the best validation
        epoch (the last ones if never validated, or with ``restore_best`` off, as in the
        original code). The checkpoint keeps the last parameters too, so a run can be
        continued."""
        if self.best["model"] is None or not self.cfg.restore_best:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best["model"])
        return model

    def finish(self, log=print) -> dict:
        cfg = self.cfg
        test = evaluate(self.best_model(), self.splits["test"], cfg.test_k, cfg.seed + 104729,
                        self.device, cfg.progress, "test")
        self.status = "finished"
        self.stopped_by = self.stopped_by or "max_epochs"
        secs = [h["seconds"] for h in self.history]
        record = self._save({"stopped_by": self.stopped_by,
                             "tested_epoch": self.best["epoch"] if self.cfg.restore_best
                             and self.best["model"] is not None else self.epoch,
                             "test": {**test.summary(), "per_point": test.per_point_list()},
                             "seconds_per_epoch": sum(secs) / len(secs) if secs else None})
        log(f"test {test}  [best epoch {self.best['epoch']}, "
            f"{record['seconds_per_epoch'] or 0:.2f} s/epoch]")
        return record


@dataclass
class TestedRun:
    """A run's tested model with its config and data (``load_tested``)."""
    state: dict                # the checkpoint or exported model file
    cfg: "TrainConfig"         # resolved
    splits: dict               # the run's data, pixel permutation applied
    model: torch.nn.Module     # the tested parameters loaded
    epoch: int                 # the epoch they come from


def load_tested(path, device: torch.device | str = "cpu") -> TestedRun:
    """Load a checkpoint (or an exported model file) as ``rws eval``, ``rws diagnose`` and
    ``rws samples`` need it: the run's data and its tested parameters."""
    state = results.load_checkpoint(path, map_location=device)
    cfg = TrainConfig.from_dict(state["config"]).resolved()
    splits = load_splits(cfg)
    model = zoo.build(cfg.model, splits["train"].shape[1]).to(device)
    params, epoch = tested_parameters(state)
    model.load_state_dict(params)
    return TestedRun(state, cfg, splits, model, epoch)


def tested_parameters(state: dict) -> tuple[dict, int]:
    """(model state, epoch) that a run tests: its best-validated epoch's, or (with
    restore_best off, as in the original code) its last ones. An exported model file
    holds only these."""
    if "best" not in state:                       # an exported model file
        return state["model"], state["epoch"]
    best = state["best"] or {}
    if TrainConfig.from_dict(state["config"]).resolved().restore_best and best.get("model"):
        return best["model"], best["epoch"]
    return state["model"], state["epoch"]


def _split_model_group(saved: dict, current: dict) -> dict:
    """An optimiser state saved before the model's parameters were split into the "p" and
    "q" groups (one "model" group) made to fit the current groups: the parameters keep
    their order, so their per-parameter state carries over."""
    if len(saved["param_groups"]) != len(current["param_groups"]) - 1:
        return saved
    first, *rest = saved["param_groups"]
    n_p = len(current["param_groups"][0]["params"])
    p_group = {**first, "params": first["params"][:n_p], "name": "p"}
    q_group = {**first, "params": first["params"][n_p:], "name": "q"}
    return {"state": saved["state"], "param_groups": [p_group, q_group, *rest]}


def format_epoch(m: dict) -> str:
    s = f"epoch {m['epoch']:4d}  train log p^ {m['train_ll']:9.3f}  {m['seconds']:7.2f} s"
    if "valid_ll" in m:
        s += f"  valid log p^_{m['valid_k']} {m['valid_ll']:9.3f} +- {m['valid_se']:.3f}"
    if m["skipped_steps"]:
        s += f"  ({m['skipped_steps']} non-finite steps skipped)"
    return s


def train(cfg: TrainConfig, out: str | Path, log=print) -> dict:
    return Trainer(cfg, out).run(log)
