"""pytest-benchmark: one training step per method and one evaluation chunk.

Each result carries the float32 matmul rate measured just before it
(``extra_info['matmul_gflops']``) and the step's matrix-multiply FLOPs, so that
``benchmarks/compare.py`` can compare runs in units of the machine's own speed.
Run: ``pytest benchmarks/test_speed.py --benchmark-json results/benchmarks/latest.json``.
"""
import pytest
import torch

from rws import allocator, bench, zoo
from rws import data as datasets
from rws.train import train_step

allocator.retain_freed_memory()   # as the CLI does


@pytest.fixture
def matmul_gflops():
    """Calibrated just before each benchmark; compare.py takes the fastest of a run's."""
    return bench.matmul_rate(seconds=0.5)


@pytest.fixture(scope="session")
def mnist():
    return datasets.load("binarized_mnist")


@pytest.mark.parametrize("case", bench.CASES, ids=[c.name.replace(" ", "_") for c in bench.CASES])
def test_train_step(benchmark, case, matmul_gflops, mnist):
    x = mnist["train"][:case.batch_size].float()
    _, method, opt, micro = bench.setup_case(case, x)
    g = torch.Generator().manual_seed(0)
    args = (method, opt, x, g, micro, case.grad_precision)
    flops = bench.count_flops(lambda: train_step(*args))
    benchmark.extra_info.update(matmul_gflops=matmul_gflops, gflop=flops / 1e9)
    benchmark.pedantic(train_step, args=args, rounds=15, warmup_rounds=3)


@pytest.mark.parametrize("K", [100, 10000])
def test_eval_chunk(benchmark, K, matmul_gflops, mnist):
    torch.manual_seed(0)
    model = zoo.build("sbn:200", 784)
    rows = bench.estimate.default_rows(model)
    x = mnist["test"][:max(1, rows // K)].float()
    c = min(K, rows)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        with bench.int8.turned_off():        # the float32 computation's FLOPs
            flops = bench.count_flops(lambda: model.log_weights(x, c, g))
        benchmark.extra_info.update(matmul_gflops=matmul_gflops, gflop=flops / 1e9)
        with bench.int8.evaluation():        # as in estimate.log_likelihood
            benchmark.pedantic(model.log_weights, args=(x, c, g), rounds=15, warmup_rounds=3)
