"""asv benchmarks: one training epoch on a fixed 2,000-point subset of binarized MNIST,
evaluation throughput, peak memory, and the fraction of the machine's matmul rate
(method x model x K). Run: ``asv run --python=same --quick`` (see tox -e bench)."""
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
        for i in range(0, SUBSET, BATCH):
            train_step(self.method, self.opt, self.x[i:i + BATCH], self.g, self.micro)

    def time_epoch(self, method, latents, K):
        self._epoch()

    def peakmem_epoch(self, method, latents, K):
        self._epoch()

    def track_fraction_of_matmul(self, method, latents, K):
        peak = bench.matmul_rate(seconds=0.5)
        row = bench.time_training(self.case, self.x, peak, steps=5, repeats=1)
        return row.fraction_of_matmul

    track_fraction_of_matmul.unit = "fraction"


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
