"""Speed measured against the machine: `rws bench`.

Every rate is reported as a ratio to the float32 matrix-multiply rate measured in the
same process, just before each timed repeat, so that the machine's own speed cancels
out. On a shared machine a neighbour only ever slows a run down, and it slows memory-
bound elementwise work and the calibration GEMM by different amounts, so both sides are
taken at their best, as timeit advises: the fastest of the repeats against the fastest
calibration of the case (median times are recorded too). The training cases take
turns repeat by repeat, so that a slow spell falls on all of them.

The FLOP model of a training step or an evaluation chunk is the count of the
matrix-multiply FLOPs it executes (torch's FlopCounterMode over one step:
forward and backward); a test checks that for an SBN this count equals the minimal
hand-derived one, so no wasted multiply inflates the rate. Evaluation counts the float32
products that its exact int8 path (``rws.int8``) replaces.

Autoregressive layers (NADE, DARN) spend their time elsewhere: unit by unit, in
matrix-vector products and rank-1 updates, and in the sigmoids of NADE's hidden units
(one per unit and hidden unit in the torch loops; the compiled kernels evaluate them
again only where a unit x_i = 1 changed the hidden pre-activations, so sparse data such
as MNIST's pixels needs several times fewer). Their floor counts what one step executes
(``count_work``: the matrix FLOPs, the matrix-vector FLOPs and the transcendental
evaluations, sigmoid, exp, log, ...) and divides by rates measured in the same process:

    floor = (matrix FLOPs - masked FLOPs + matrix-vector FLOPs) / matmul rate
            + transcendental evaluations / large-tensor torch.sigmoid rate

a time no implementation of the same arithmetic beats on this machine; each row prints
its step time as a fraction of it. The masked FLOPs are those of a DARN's dense products
x (W * M) and (x^T G) * M that multiply the zeros of its triangular mask M (weights known
to be zero before any data is seen, about half of each product): an implementation
that skips them does the same arithmetic, so the floor does not count them.

The batch-25 and batch-100 steps of a model give a line, a fixed time a step plus a time
a point, and an epoch-time ratio between the two batch sizes. Beside it stand the parts
of the step that no removal of overhead shortens (``time_arithmetic``): its matrix
products replayed alone at their own shapes, and the optimiser's update, whose cost is
a pass over every parameter and its moments, a fixed time a step that the floor above
does not count. The ratio these alone give, and the fixed time that a target ratio
leaves the rest of the step, say how far any implementation of the step can go.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from rws import allocator, ar_kernels, cpu, estimate, int8, methods, zoo
from rws import data as datasets
from rws.train import OPTIMIZERS, micro_batch_size, train_step


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def fastest_seconds(fn, device="cpu", *, seconds: float | None = None,
                    repeats: int | None = None, calls: int = 1) -> float:
    """A call's seconds of fn, the fastest of timings of ``calls`` calls each: ``repeats``
    timings, or as many as fit in ``seconds`` (one call first, untimed, to warm up)."""
    fn()
    best, done = math.inf, 0
    t_end = time.perf_counter() + (seconds or 0.0)
    while (done < repeats) if repeats is not None else (time.perf_counter() < t_end):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / calls)
        done += 1
    return best


def matmul_rate(device="cpu", seconds: float = 1.0, n: int = 2048) -> float:
    """Best float32 GFLOP/s of an n x n x n matrix multiply over repeated timings."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / fastest_seconds(lambda: a @ b, device, seconds=seconds) / 1e9


def count_flops(fn) -> int:
    """Matrix-multiply FLOPs executed by fn() (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sigmoid_rate(device="cpu", seconds: float = 0.25, n: int = 1 << 22) -> float:
    """Best torch.sigmoid rate on a large float32 tensor, G elements/s."""
    a = torch.randn(n, device=device)
    out = torch.empty_like(a)
    return n / fastest_seconds(lambda: torch.sigmoid(a, out=out), device,
                               seconds=seconds) / 1e9


# elementwise operations that evaluate an exponential or a logarithm per element
TRANSCENDENTAL = {"sigmoid", "exp", "exp2", "log", "log1p", "expm1", "tanh", "softplus",
                  "softplus_backward", "log_sigmoid_forward", "log_sigmoid_backward",
                  "logsumexp", "logaddexp"}


def _vector_flops(name: str, args) -> int:
    """2 x the multiply-adds of a matrix-vector product, rank-1 update or dot product."""
    if name == "mv":                       # (matrix, vector)
        return 2 * args[0].numel()
    if name == "addmv":                    # (input, matrix, vector)
        return 2 * args[1].numel()
    if name == "addr":                     # (input, vec1, vec2)
        return 2 * args[1].numel() * args[2].numel()
    if name == "dot":
        return 2 * args[0].numel()
    return 0


@dataclass
class Work:
    """What fn() executes, counted operation by operation (forward and backward)."""
    matmul_flops: int = 0          # mm, addmm, bmm (torch's FlopCounterMode)
    vector_flops: int = 0          # mv, addmv, addr, dot
    transcendentals: int = 0       # elements through TRANSCENDENTAL operations
    masked_flops: int = 0          # of matmul_flops, those on a mask's zeros (a DARN's W * M)

    def floor(self, gflops: float, gsigmoids: float) -> float:
        """Seconds at the given rates (GFLOP/s, G sigmoids/s): the module docstring's floor."""
        return ((self.matmul_flops - self.masked_flops + self.vector_flops) / (gflops * 1e9)
                + self.transcendentals / (gsigmoids * 1e9))


class _WorkCounter(TorchDispatchMode):
    """Counts torch's operations as they dispatch, and the compiled kernels' work as
    they report it (``rws.ar_kernels.on_work``)."""

    def __init__(self):
        super().__init__()
        self.work = Work()

    def _kernel_work(self, vector_flops: int, sigmoids: int, masked_flops: int) -> None:
        self.work.vector_flops += vector_flops
        self.work.transcendentals += sigmoids
        self.work.masked_flops += masked_flops

    def __enter__(self):
        ar_kernels.on_work = self._kernel_work
        return super().__enter__()

    def __exit__(self, *exc):
        ar_kernels.on_work = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.rstrip("_")
        if name in TRANSCENDENTAL:
            self.work.transcendentals += args[0].numel()
        else:
            self.work.vector_flops += _vector_flops(name, args)
        return func(*args, **(kwargs or {}))


def count_work(fn) -> Work:
    """The matrix FLOPs, matrix-vector FLOPs and transcendental evaluations of fn()."""
    with FlopCounterMode(display=False) as flops, _WorkCounter() as counter:
        fn()
    counter.work.matmul_flops = flops.get_total_flops()
    return counter.work


PRODUCTS = ("mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_")


def _operand_copy(t):
    """A tensor operand copied with its strides (a transposed view stays transposed)."""
    if isinstance(t, torch.Tensor):
        return t.detach().clone(memory_format=torch.preserve_format)
    return t


class _ProductRecorder(TorchDispatchMode):
    """The matrix products that run while it is active, each with copies of its operands
    (their values and strides), so that ``replay`` runs the same products again alone."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in PRODUCTS:
            self.calls.append((func, [_operand_copy(a) for a in args],
                               {k: _operand_copy(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)

    def replay(self) -> None:
        for func, args, kwargs in self.calls:
            func(*args, **kwargs)


@dataclass
class StepArithmetic:
    """A step's matrix products replayed alone and its optimiser's update alone
    (``time_arithmetic``)."""
    products: int                  # how many matrix products one step runs
    product_seconds: float         # all of them, replayed
    gflop: float                   # their FLOPs, 1e9
    optimizer_seconds: float

    @property
    def seconds(self) -> float:
        return self.product_seconds + self.optimizer_seconds


def time_arithmetic(case: "Case", train_x, device="cpu", calls: int = 50,
                    repeats: int = 7) -> StepArithmetic:
    """The two parts of a training step that no removal of overhead makes cheaper: its
    matrix products, replayed alone at their shapes, strides and values (recorded over
    one step), and the optimiser's update, each the fastest of ``repeats`` timings. On a
    copy of the case (``setup_case``), so that the optimiser's repeated updates leave
    the timed one alone."""
    _, method, opt, micro = setup_case(case, train_x, device)
    g = torch.Generator(device=device).manual_seed(0)
    B = case.batch_size
    batches = [train_x[i * B:(i + 1) * B].to(device).float() for i in range(4)]
    with _environ(case.env):
        for x in batches[:3]:
            train_step(method, opt, x, g, micro, case.grad_precision)
        with _ProductRecorder() as products:
            train_step(method, opt, batches[3], g, micro, case.grad_precision)
    # the recorded step's update is the one timed: its gradients stay until the next step
    return StepArithmetic(len(products.calls),
                          fastest_seconds(products.replay, device, repeats=repeats,
                                          calls=calls),
                          count_flops(products.replay) / 1e9,
                          fastest_seconds(opt.step, device, repeats=repeats, calls=calls))


@dataclass
class Case:
    name: str
    method: str
    model: str
    K: int
    batch_size: int = 100
    grad_precision: str = "float32"    # "bfloat16": weight gradients as ``rws.bf16``
    env: dict | None = None            # environment while it runs, e.g. {"RWS_NUMBA": "0"}


@dataclass
class Row:
    case: str
    seconds_per_step: float        # the fastest repeat
    seconds_per_epoch: float
    gflop_per_step: float
    gflops: float
    fraction_of_matmul: float      # gflops over the fastest calibration of the case
    seconds_median: float          # the median repeat, for the spread
    gsigmoid_per_step: float = math.nan   # transcendental evaluations (count_work), 1e9
    work: dict | None = None              # the floor's counts (Work: FLOPs, evaluations)
    floor_seconds: float = math.nan       # Work.floor at the fastest calibrations
    fraction_of_floor: float = math.nan   # floor_seconds / seconds_per_step
    # each repeat's epoch time x the calibration taken just before it (GFLOP/s), in order
    calibrated_repeats: list[float] = field(default_factory=list)


def setup_case(case: Case, train_x, device="cpu"):
    """(model, method, Adam optimiser, micro-batch size) of a case, seeded."""
    torch.manual_seed(0)
    model = zoo.build(case.model, train_x.shape[1]).to(device)
    method = methods.build(case.method, model, case.K).to(device)
    opt = OPTIMIZERS["adam"](method.param_groups(1e-3))
    micro = micro_batch_size(model, case.K, case.batch_size)
    return model, method, opt, micro


def _rates(peak) -> Callable[[], float]:
    return peak if callable(peak) else (lambda: peak)


def _row(name, seconds, per_epoch, flops, peaks, work: Work | None = None,
         sigmoid_peaks=()) -> Row:
    """The fastest repeat against the fastest calibration: noise only adds time."""
    dt = min(seconds)
    rate = flops / dt / 1e9
    row = Row(name, dt, per_epoch(dt), flops / 1e9, rate, rate / max(peaks),
              statistics.median(seconds),
              calibrated_repeats=[per_epoch(t) * p for t, p in zip(seconds, peaks)])
    if work is not None and sigmoid_peaks:
        row.gsigmoid_per_step = work.transcendentals / 1e9
        row.work = asdict(work)
        row.floor_seconds = work.floor(max(peaks), max(sigmoid_peaks))
        row.fraction_of_floor = row.floor_seconds / dt
    return row


@contextlib.contextmanager
def _environ(env: dict | None):
    """os.environ with ``env`` set, restored afterwards."""
    before = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _training_timer(case: Case, train_x, batches, device):
    """(time one repeat over ``batches`` -> seconds per step, the step's work) of a
    case, warmed up."""
    _, method, opt, micro = setup_case(case, train_x, device)
    g = torch.Generator(device=device).manual_seed(0)

    def step(x):
        with _environ(case.env):
            return train_step(method, opt, x, g, micro, case.grad_precision)

    work = count_work(lambda: step(batches[0]))       # bfloat16 products count as float32's
    for x in batches[:20]:
        step(x)         # warm-up: the first tens of steps of a process run slower

    def repeat() -> float:
        t = time.perf_counter()
        for x in batches:
            step(x)
        _sync(device)
        return (time.perf_counter() - t) / len(batches)
    return repeat, work


def time_trainings(cases: list[Case], train_x, peak, steps, device="cpu",
                   repeats: int = 5, sigmoids=None) -> list[Row]:
    """Seconds per step of each case (fastest of ``repeats`` timings of ``steps`` steps;
    ``steps``: a number, or a function of the case) and the epoch time it implies for
    the whole training set. The cases take turns, repeat by repeat, so that a slow spell
    of the machine falls on all of them, not on one (ratios between rows, such as the
    K-scaling, are then measured side by side). ``peak``: the matmul GFLOP/s, or a
    function that measures it (called before each repeat of each case); ``sigmoids``:
    the sigmoid rate for the floor, likewise (default: measured once)."""
    steps_of = steps if callable(steps) else (lambda case: steps)
    batches = {}    # the first minibatches of the training set, shared by the cases
    for B in {c.batch_size for c in cases}:
        n = max(steps_of(c) for c in cases if c.batch_size == B)
        batches[B] = [train_x[i * B:(i + 1) * B].to(device).float() for i in range(n)]
    timers = [_training_timer(c, train_x, batches[c.batch_size][:steps_of(c)], device)
              for c in cases]
    sigmoids = sigmoids or sigmoid_rate(device, 0.1)
    times, peaks, sig = [[] for _ in cases], [[] for _ in cases], [[] for _ in cases]
    for _ in range(repeats):
        for (repeat, _), t, p, e in zip(timers, times, peaks, sig):
            p.append(_rates(peak)())
            e.append(_rates(sigmoids)())
            t.append(repeat())
    return [_row(c.name, t, lambda dt, B=c.batch_size: dt * math.ceil(len(train_x) / B),
                 work.matmul_flops, p, work, e)
            for c, (_, work), t, p, e in zip(cases, timers, times, peaks, sig)]


def time_training(case: Case, train_x, peak, steps: int, device="cpu",
                  repeats: int = 5) -> Row:
    """``time_trainings`` of one case."""
    return time_trainings([case], train_x, peak, steps, device, repeats)[0]


def time_evaluation(model_spec: str, x, K: int, peak, device="cpu", repeats: int = 5) -> Row:
    """Large-K log-likelihood throughput on the points x (seconds: the fastest of
    ``repeats`` evaluations of all of them)."""
    torch.manual_seed(0)
    model = zoo.build(model_spec, x.shape[1]).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = estimate.default_rows(model)
    probe = x[: max(1, rows // K)].to(device).float()
    with torch.inference_mode(), int8.turned_off():   # the float32 computation's FLOPs
        flops_chunk = count_flops(lambda: model.log_weights(probe, min(K, rows), g))
    rows_per_chunk = probe.shape[0] * min(K, rows)
    estimate.log_likelihood(model, x[:2], K, generator=g, device=device)   # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        peaks.append(_rates(peak)())
        t = time.perf_counter()
        estimate.log_likelihood(model, x, K, generator=g, device=device)
        times.append(time.perf_counter() - t)
    flops = flops_chunk / rows_per_chunk * len(x) * K
    return _row(f"eval {model_spec} K={K} ({len(x)} points)", times, lambda dt: float("nan"),
                flops, peaks)


def compare_with_pyro(train_x, K: int, steps: int, batch_size: int = 100, repeats: int = 3,
                      dreams_per_point: int | None = 1):
    """Pyro's ReweightedWakeSleep and rws-bench's RWS timed side by side, alternating
    ``repeats`` times (so a slow spell of the machine hits both): the same SBN 200
    (784 <- 200, SBN Q), K particles vectorised, wake-phi and sleep-phi mixed
    (insomnia 0.5). ``dreams_per_point`` 1 (num_sleep_particles=1) gives Pyro the work
    of rws-bench's step; None keeps Pyro's default, K dreams per point (1.8x the matrix
    FLOPs at K=5). Returns medians {seconds_per_step (Pyro), ours_seconds_per_step,
    speedup}, or None when pyro-ppl is not installed."""
    try:
        import pyro
        import pyro.distributions as dist
        from pyro.infer import SVI, ReweightedWakeSleep
        from pyro.optim import Adam
    except ImportError:
        return None
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = zoo.build("sbn:200", train_x.shape[1])
    top, p0, q0 = net.p_layers[1], net.p_layers[0], net.q_layers[0]

    def model(x, observations=None):
        pyro.module("p0", p0)
        pyro.module("top", top)
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=top.a).expand([x.shape[0], 200]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=p0.logits(h)).to_event(1), obs=x)

    def guide(x, observations=None):
        pyro.module("q0", q0)
        if observations is not None:
            x = observations["x"]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=q0.logits(x)).to_event(1))

    rws = ReweightedWakeSleep(num_particles=K, insomnia=0.5, vectorize_particles=True,
                              max_plate_nesting=1, num_sleep_particles=dreams_per_point)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=rws)
    _, method, opt, micro = setup_case(Case("", "rws", "sbn:200", K, batch_size), train_x, "cpu")
    g = torch.Generator().manual_seed(0)
    steppers = {"pyro": svi.step, "ours": lambda x: train_step(method, opt, x, g, micro)}
    batches = [train_x[i * batch_size:(i + 1) * batch_size].float() for i in range(steps)]
    times = {name: [] for name in steppers}
    for _ in range(repeats + 1):                    # the first round warms both up
        for name, step in steppers.items():
            t = time.perf_counter()
            for x in batches:
                step(x)
            times[name].append((time.perf_counter() - t) / steps)
    pyro_t, ours_t = times["pyro"][1:], times["ours"][1:]
    return {"seconds_per_step": statistics.median(pyro_t),
            "ours_seconds_per_step": statistics.median(ours_t),
            "speedup": statistics.median(p / o for p, o in zip(pyro_t, ours_t))}


CASES = [
    Case("rws sbn:200 K=5 B=100", "rws", "sbn:200", 5),
    Case("rws sbn:200 K=50 B=100", "rws", "sbn:200", 50),
    Case("rws sbn:200 K=5 bf16 grads", "rws", "sbn:200", 5, grad_precision="bfloat16"),
    Case("ws sbn:200 K=1", "ws", "sbn:200", 1),
    Case("rws sbn:200-200 K=5", "rws", "sbn:200-200", 5),
    Case("nvil sbn:200 K=1", "nvil", "sbn:200", 1),
    Case("vimco sbn:200 K=5", "vimco", "sbn:200", 5),
    Case("vae gauss:50 K=1", "vae", "gauss:50", 1),
    Case("iwae gauss:50 K=5", "iwae", "gauss:50", 5),
    Case("rws gauss:50 K=5", "rws", "gauss:50", 5),
    # the paper's protocol: batch 25, and the autoregressive layers (cost elementwise)
    Case("rws sbn:200 K=5 B=25", "rws", "sbn:200", 5, 25),
    Case("rws darn:200 K=5 B=100", "rws", "darn:200", 5),
    Case("rws darn:200 K=5 B=25", "rws", "darn:200", 5, 25),
    Case("rws nade:200 K=5 B=100", "rws", "nade[hidden=200]:200", 5),
    Case("rws nade:200 K=5 B=25", "rws", "nade[hidden=200]:200", 5, 25),
]
# (batch 25 row, batch 100 row) of a model: their epoch-time ratio is printed
BATCH_PAIRS = [("rws sbn:200 K=5 B=25", "rws sbn:200 K=5 B=100"),
               ("rws darn:200 K=5 B=25", "rws darn:200 K=5 B=100"),
               ("rws nade:200 K=5 B=25", "rws nade:200 K=5 B=100")]
TORCH_LOOPS = " torch loops"
# the autoregressive cases again on the torch loops (rws.ar_kernels turned off): the
# kernels' speedup is printed, measured in the same run
CASES += [Case(c.name + TORCH_LOOPS, c.method, c.model, c.K, c.batch_size, env={"RWS_NUMBA": "0"})
          for c in CASES if any(f in c.model for f in ("nade", "darn"))]
CASE = {c.name: c for c in CASES}


def _autoregressive(case: Case) -> bool:
    return any(f in case.model for f in ("nade", "darn"))


def calibrated_seconds(row: Row) -> float:
    """A row's epoch time in units of its matmul calibration (seconds x GFLOP/s), so that
    the machine's drift between two rows cancels out of their ratio."""
    return row.seconds_per_epoch * row.gflops / row.fraction_of_matmul


def paired_ratio(a: Row, b: Row) -> tuple[float, float, float]:
    """(median, lowest, highest) over the repeats of a's calibrated epoch time over b's
    in the same turn. The cases take turns repeat by repeat, so each pair was measured
    minutes apart at most, within one spell of a shared machine; the median of the pairs
    moves less from run to run than the ratio of the two fastest repeats, which may come
    from different spells."""
    ratios = [x / y for x, y in zip(a.calibrated_repeats, b.calibrated_repeats)]
    return statistics.median(ratios), min(ratios), max(ratios)


def step_split(small: Row, large: Row, b_small: int = 25, b_large: int = 100):
    """(fixed seconds a step, seconds a point): the line t(B) = fixed + B per_point
    through two rows' fastest steps at batch sizes b_small and b_large. An epoch at
    b_small then takes (fixed / b_small + per_point) / (fixed / b_large + per_point)
    times as long as one at b_large, so the ratio stays within a target T only while
    fixed <= per_point b_small b_large (T - 1) / (b_large - T b_small): x1.3 for batch 25
    against 100 allows 11.1 points' time of fixed cost a step (``fixed_allowed``)."""
    return line_through(small.seconds_per_step, large.seconds_per_step, b_small, b_large)


def line_through(t_small: float, t_large: float, b_small: int = 25, b_large: int = 100):
    """(fixed, per point) of the line t(B) = fixed + B per_point through two step times."""
    per_point = (t_large - t_small) / (b_large - b_small)
    return t_small - b_small * per_point, per_point


def fixed_allowed(per_point: float, target: float = 1.3, b_small: int = 25,
                  b_large: int = 100) -> float:
    """The most fixed time a step may take for the b_small / b_large epoch-time ratio to
    stay within ``target`` (``step_split``)."""
    return per_point * b_small * b_large * (target - 1) / (b_large - target * b_small)


def arithmetic_split(small: StepArithmetic, large: StepArithmetic, fixed: float,
                     per_point: float, b_small: int = 25, b_large: int = 100) -> dict:
    """``time_arithmetic`` at the two batch sizes against the step's line (``step_split``:
    fixed + B per_point): the products' and the optimiser's own line, the epoch-time
    ratio that they alone give, and the fixed time that x1.3 leaves the rest of the
    step (sampling, log-probabilities, weights, Python and dispatch) with its per-point
    time as it is."""
    seconds = [small.seconds, large.seconds]
    a_fixed, a_point = line_through(*seconds, b_small, b_large)
    return {"products": small.products, "gflop": [small.gflop, large.gflop],
            "product_seconds": [small.product_seconds, large.product_seconds],
            "optimizer_seconds": [small.optimizer_seconds, large.optimizer_seconds],
            "seconds": seconds, "epoch_ratio": seconds[0] * b_large / (seconds[1] * b_small),
            "fixed_seconds": a_fixed, "seconds_per_point": a_point,
            "rest_fixed_seconds_allowed": fixed_allowed(per_point, 1.3, b_small, b_large) - a_fixed}


def run(device="cpu", quick=False, pyro=True, log=print, only: str | None = None,
        repeats: int = 5) -> dict:
    """The bench table; ``only``: comma-separated substrings, the cases whose names hold
    one of them (the evaluation row is "eval"); ``repeats``: timed repeats of each
    training case."""
    device = torch.device(device)
    allocator.retain_freed_memory()
    train_x = datasets.load("binarized_mnist")["train"]
    test_x = datasets.load("binarized_mnist")["test"]
    peak = matmul_rate(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu.model_name() or "cpu")
    log(f"device {device} ({name}), {torch.get_num_threads()} threads; float32 matmul "
        f"2048^3: {peak:.1f} GFLOP/s")
    steps = 20 if quick else 100
    calibrate = lambda: matmul_rate(device, seconds=0.25)   # noqa: E731 (before each repeat)
    sigmoids = lambda: sigmoid_rate(device, seconds=0.1)    # noqa: E731
    log(f"torch.sigmoid, {1 << 22} float32 elements: {sigmoids():.2f} G/s")
    rows = []
    header = (f"{'case':34s} {'s/step':>9s} {'s/epoch':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
              f"{'of matmul':>9s} {'Gsigm/step':>10s} {'of floor':>8s}")
    log(header + f"   (fastest of {repeats} repeats, fastest calibration)")

    def steps_of(case):
        if _autoregressive(case):
            return max(3, steps // 10)
        return steps if case.K * case.batch_size <= 1000 else max(5, steps // 5)
    cases = CASES[:3] if quick else CASES
    wanted = only.split(",") if only else None
    if wanted:
        cases = [c for c in CASES if any(w in c.name for w in wanted)]
    for r in time_trainings(cases, train_x, calibrate, steps_of, device, repeats,
                            sigmoids=sigmoids):
        rows.append(r)
        log(f"{r.case:34s} {r.seconds_per_step * 1e3:7.2f}ms {r.seconds_per_epoch:8.2f} "
            f"{r.gflop_per_step:10.3f} {r.gflops:8.1f} {r.fraction_of_matmul:9.1%} "
            f"{r.gsigmoid_per_step:10.4f} {r.fraction_of_floor:8.1%}")
    by_name = {r.case: r for r in rows}
    batch_ratios, batch_ratios_paired, step_splits = {}, {}, {}
    for small, large in BATCH_PAIRS:
        if small in by_name and large in by_name:
            model = small.replace(" B=25", "")
            ratio = calibrated_seconds(by_name[small]) / calibrated_seconds(by_name[large])
            median, lo, hi = paired_ratio(by_name[small], by_name[large])
            batch_ratios[model] = ratio
            batch_ratios_paired[model] = {"median": median, "min": lo, "max": hi}
            fixed, per_point = step_split(by_name[small], by_name[large])
            step_splits[model] = {"fixed_seconds": fixed, "seconds_per_point": per_point,
                                  "fixed_seconds_allowed_at_x1.3": fixed_allowed(per_point)}
            log(f"epoch time, batch 25 / batch 100, {model}: x{median:.2f} (median of the "
                f"repeats paired turn by turn, x{lo:.2f}-{hi:.2f}; fastest against fastest "
                f"x{ratio:.2f}); a step {fixed * 1e3:.2f} ms + {per_point * 1e6:.1f} us a "
                f"point, where x1.3 allows {fixed_allowed(per_point) * 1e3:.2f} ms a step")
            step_splits[model]["arithmetic"] = arith = arithmetic_split(
                *(time_arithmetic(CASE[name], train_x, device) for name in (small, large)),
                fixed, per_point)
            log(f"  its {arith['products']} matrix products and the optimiser alone, replayed: "
                f"{arith['seconds'][0] * 1e3:.2f} ms a step at batch 25, "
                f"{arith['seconds'][1] * 1e3:.2f} at batch 100 (epoch ratio "
                f"x{arith['epoch_ratio']:.2f}; {arith['fixed_seconds'] * 1e3:.2f} ms + "
                f"{arith['seconds_per_point'] * 1e6:.1f} us a point); x1.3 leaves the rest "
                f"of the step {arith['rest_fixed_seconds_allowed'] * 1e3:.2f} ms a step, "
                f"where it takes {(fixed - arith['fixed_seconds']) * 1e3:.2f}")
            # the floor over the products and the optimiser alone: the most of the floor
            # that a step doing this arithmetic and nothing else reaches
            arith["of_floor_alone"] = [by_name[name].floor_seconds / t
                                       for name, t in zip((small, large), arith["seconds"])]
            log(f"  the products and the optimiser alone are at "
                f"{arith['of_floor_alone'][0]:.1%} (batch 25) and "
                f"{arith['of_floor_alone'][1]:.1%} (batch 100) of the step's floor")
    kernel_speedups, of_dense_floor = {}, {}
    for case_name, loops in by_name.items():
        if case_name.endswith(TORCH_LOOPS) and case_name[:-len(TORCH_LOOPS)] in by_name:
            base = case_name[:-len(TORCH_LOOPS)]
            kernel_speedups[base] = calibrated_seconds(loops) / calibrated_seconds(by_name[base])
            # the floor of the arithmetic as the torch loops do it (NADE: a sigmoid per unit
            # and hidden unit), against the kernels' step, which skips some of it
            of_dense_floor[base] = loops.floor_seconds / by_name[base].seconds_per_step
            log(f"compiled kernels against torch loops, {base}: x{kernel_speedups[base]:.2f} "
                f"faster; {of_dense_floor[base]:.1%} of the torch loops' floor")
    if not wanted or any(w in "eval" for w in wanted):
        ev = time_evaluation("sbn:200", test_x[:100 if quick else 200], 1000, calibrate, device)
        rows.append(ev)
        log(f"{ev.case:34s} {ev.seconds_per_step:8.2f}s {'':>8s} {ev.gflop_per_step:10.1f} "
            f"{ev.gflops:8.1f} {ev.fraction_of_matmul:9.1%}")
    scaling = {}
    k5, k50 = by_name.get(CASES[0].name), by_name.get(CASES[1].name)
    if k5 and k50:
        # time ratio in calibrated units (seconds x matmul rate): drift between cases cancels
        scaling = {"time_ratio": calibrated_seconds(k50) / calibrated_seconds(k5),
                   "flop_ratio": k50.gflop_per_step / k5.gflop_per_step}
        scaling["deviation"] = scaling["time_ratio"] / scaling["flop_ratio"] - 1
        log(f"K=50 vs K=5: time x{scaling['time_ratio']:.2f}, FLOPs x{scaling['flop_ratio']:.2f} "
            f"({scaling['deviation']:+.1%})")
    out = {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
           "repeats": repeats,
           "matmul_gflops": peak, "rows": [asdict(r) for r in rows], "k_scaling": scaling,
           "batch25_over_batch100": batch_ratios,
           "batch25_over_batch100_paired": batch_ratios_paired,
           "batch_step_split": step_splits, "kernel_speedup": kernel_speedups,
           "kernel_of_torch_loops_floor": of_dense_floor}
    if pyro and device.type == "cpu" and not wanted:
        for key, dreams, what in (("pyro", 1, "100 dreams (the same work)"),
                                  ("pyro_default", None, "Pyro's default 500 dreams")):
            cmp = compare_with_pyro(train_x, 5, 10 if quick else 30, dreams_per_point=dreams)
            if cmp is None:
                log("pyro: not installed (pip install pyro-ppl) - comparison skipped")
                break
            out[key] = cmp
            log(f"Pyro ReweightedWakeSleep, same SBN 200, K=5, B=100, vectorised, {what}, "
                f"alternating with rws-bench: {cmp['seconds_per_step'] * 1e3:.2f} vs "
                f"{cmp['ours_seconds_per_step'] * 1e3:.2f} ms/step; rws-bench is "
                f"x{cmp['speedup']:.1f} faster")
    return out
