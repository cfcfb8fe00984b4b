"""asv benchmarks: one training epoch on a fixed 2,000-point subset of binarized MNIST,
evaluation throughput, peak memory, and the fraction of the machine's matmul rate
(method x model x K); epochs at the paper's batch 25 against 100 for SBN, DARN and NADE
models, and the ratio of the two measured in one run. Run: ``asv run --python=same
--quick`` (see tox -e bench)."""
import torch

from rws import allocator, bench, estimate, zoo
from rws import data as datasets
from rws.train import train_step

SUBSET = 2000
BATCH = 100
MODELS = {"binary": "sbn:200", "gaussian": "gauss:50"}
_DATA = {}
allocator.retain_freed_memory()   # as the CLI does


def mnist(split):
    if split not in _DATA:
        _DATA[split] = datasets.load("binarized_mnist")[split]
    return _DATA[split]


def epoch(method, opt, x, batch, g, micro):
    """One training epoch over x in minibatches of ``batch``."""
    for i in range(0, x.shape[0], batch):
        train_step(method, opt, x[i:i + batch], g, micro)


def fits(method, latents, K):
    """The combinations worth timing: single-sample methods at K=1, multi-sample ones at
    K>1, reparameterised methods on Gaussian latents only."""
    if method in ("ws", "nvil", "vae"):
        return K == 1 and (method != "vae" or latents == "gaussian")
    if method == "iwae":
        return K > 1 and latents == "gaussian"
    return K > 1


class TrainEpoch:
    """Seconds and peak memory of one epoch over the subset."""

    params = (["rws", "ws", "nvil", "vimco", "vae", "iwae"], ["binary", "gaussian"], [1, 5, 50])
    param_names = ["method", "latents", "K"]
    timeout = 600

    def setup(self, method, latents, K):
        if not fits(method, latents, K):
            raise NotImplementedError  # asv skips combinations a method does not fit
        self.x = mnist("train")[:SUBSET].float()
        self.case = bench.Case("", method, MODELS[latents], K, BATCH)
        _, self.method, self.opt, self.micro = bench.setup_case(self.case, self.x)
        self.g = torch.Generator().manual_seed(0)

    def _epoch(self):
        epoch(self.method, self.opt, self.x, BATCH, self.g, self.micro)

    def time_epoch(self, method, latents, K):
        self._epoch()

    def peakmem_epoch(self, method, latents, K):
        self._epoch()

    def track_fraction_of_matmul(self, method, latents, K):
        peak = bench.matmul_rate(seconds=0.5)
        row = bench.time_training(self.case, self.x, peak, steps=5, repeats=1)
        return row.fraction_of_matmul

    track_fraction_of_matmul.unit = "fraction"


class TrainEpochBatch:
    """Seconds of one epoch over a fixed 500-point subset at the paper's batch 25 and at
    100, one thread, RWS K = 5: SBN 200 (step overhead) and the autoregressive models
    (unit loops), the batch pairs of ``rws bench``."""

    params = (["sbn:200", "darn:200", "nade:200"], [25, 100])
    param_names = ["model", "batch"]
    timeout = 600
    points = 500

    def setup(self, model, batch):
        torch.set_num_threads(1)
        self.x = mnist("train")[:self.points].float()
        self.batch = batch
        case = bench.Case("", "rws", model, 5, batch)
        _, self.method, self.opt, self.micro = bench.setup_case(case, self.x)
        self.g = torch.Generator().manual_seed(0)
        self._epoch()            # compiles and warms the kernels outside the timing

    def _epoch(self):
        epoch(self.method, self.opt, self.x, self.batch, self.g, self.micro)

    def time_epoch(self, model, batch):
        self._epoch()


class BatchRatio:
    """A batch-25 epoch over a batch-100 epoch (one thread, RWS K = 5), the two taken in
    turns in one process and paired turn by turn (``rws.bench.paired_ratio``), so that
    the machine's speed cancels out; `rws bench` prints it with its fixed and per-point
    parts."""

    params = (["sbn:200", "darn:200", "nade:200"],)
    param_names = ["model"]
    timeout = 600

    def setup(self, model):
        torch.set_num_threads(1)
        self.x = mnist("train")

    def track_batch25_over_batch100(self, model):
        cases = [bench.Case(f"B={b}", "rws", model, 5, b) for b in (25, 100)]
        steps = 40 if model == "sbn:200" else 8
        small, large = bench.time_trainings(
            cases, self.x, lambda: bench.matmul_rate(seconds=0.1), steps=steps, repeats=3)
        return bench.paired_ratio(small, large)[0]

    track_batch25_over_batch100.unit = "ratio"


class Evaluate:
    """Large-K log-likelihood: 20 test points."""

    params = ([100, 1000, 10000],)
    param_names = ["K"]
    timeout = 600

    def setup(self, K):
        torch.manual_seed(0)
        self.model = zoo.build("sbn:200", 784)
        self.x = mnist("test")[:20]

    def time_log_likelihood(self, K):
        estimate.log_likelihood(self.model, self.x, K, generator=torch.Generator().manual_seed(0))

    def peakmem_log_likelihood(self, K):
        estimate.log_likelihood(self.model, self.x, K, generator=torch.Generator().manual_seed(0))
