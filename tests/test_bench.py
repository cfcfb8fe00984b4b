"""The FLOP model counts exactly the minimal matrix multiplies of a step (no waste)."""
import math

import pytest
import torch

from rws import ar_kernels, bench, layers, methods, zoo
from rws.train import OPTIMIZERS, micro_batch_size, train_step


def minimal_rws_flops(sizes, B, K):
    """Hand count for an SBN stack trained by RWS with wake-P, wake-Q and B dreams:
    Q_0's logits once per point, every other layer once per proposal; weight gradients
    only (samples and data need no input gradient)."""
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    q = 2 * B * pairs[0] + sum(2 * B * K * p for p in pairs[1:])   # Q forward on proposals
    p = sum(2 * B * K * p for p in pairs)                            # P forward
    dreams = sum(2 * B * p for p in pairs)                           # one forward pass each
    return 2 * q + 2 * p + dreams + 2 * dreams                       # P on dreams; Q fwd + grad


@pytest.mark.parametrize("spec,K", [("sbn:200", 5), ("sbn:200-200", 5), ("sbn:30-20-10", 3)])
def test_counted_flops_equal_the_minimal_count(spec, K):
    torch.manual_seed(0)
    model = zoo.build(spec, 784)
    method = methods.build("rws", model, K)
    opt = OPTIMIZERS["adam"](method.param_groups(1e-3))
    x = torch.bernoulli(torch.full((100, 784), 0.2))
    micro = micro_batch_size(model, K, 100)
    flops = bench.count_flops(lambda: train_step(method, opt, x, None, micro))
    assert flops == minimal_rws_flops(model.sizes, 100, K)


def test_training_timer_reports_consistent_rates():
    x = torch.bernoulli(torch.full((300, 784), 0.2))
    row = bench.time_training(bench.Case("t", "rws", "sbn:20", 2), x, peak=100.0, steps=3,
                              repeats=1)
    assert row.seconds_per_step > 0
    assert row.seconds_per_epoch == pytest.approx(row.seconds_per_step * 3)
    assert row.gflops == pytest.approx(row.gflop_per_step / row.seconds_per_step)
    assert row.fraction_of_matmul == pytest.approx(row.gflops / 100.0)


def test_training_cases_take_turns_repeat_by_repeat():
    """Calibrations 1, 2, 3, 4 in call order: alternating cases A B A B see 1, 3 and 2, 4."""
    x = torch.bernoulli(torch.full((300, 784), 0.2))
    calls = iter(range(1, 5))
    cases = [bench.Case("A", "rws", "sbn:10", 2), bench.Case("B", "ws", "sbn:10", 1)]
    rows = bench.time_trainings(cases, x, lambda: float(next(calls)), steps=2, repeats=2)
    assert [r.case for r in rows] == ["A", "B"]
    assert [r.gflops / r.fraction_of_matmul for r in rows] == pytest.approx([3.0, 4.0])


def test_rows_take_the_fastest_repeat_against_the_fastest_calibration():
    row = bench._row("r", [3.0, 1.0, 2.0], lambda dt: 10 * dt, 4e9, [100.0, 50.0, 200.0])
    assert row.seconds_per_step == 1.0 and row.seconds_median == 2.0
    assert row.seconds_per_epoch == 10.0 and row.gflops == pytest.approx(4.0)
    assert row.fraction_of_matmul == pytest.approx(4.0 / 200.0)


def test_paired_ratio_divides_the_repeats_of_each_turn_in_calibrated_time():
    # repeat i of each case: epoch time 10 dt_i at calibration p_i; a's turns are twice
    # b's in calibrated time but for one slow spell of a (x4 in the second turn)
    a = bench._row("a", [2.0, 8.0, 2.0], lambda dt: 10 * dt, 1e9, [100.0, 100.0, 50.0])
    b = bench._row("b", [1.0, 1.0, 0.5], lambda dt: 10 * dt, 1e9, [100.0, 100.0, 100.0])
    assert a.calibrated_repeats == [2000.0, 8000.0, 1000.0]
    assert bench.paired_ratio(a, b) == (2.0, 2.0, 8.0)
    # the fastest against the fastest mixes turns: 2 x 100 over 0.5 x 100 -> x4
    assert bench.calibrated_seconds(a) / bench.calibrated_seconds(b) == pytest.approx(4.0)


def test_step_split_is_the_line_through_the_two_batch_sizes():
    # t(B) = 1 ms + 40 us B: 2 ms at batch 25, 5 ms at batch 100
    small = bench._row("s", [2e-3], lambda dt: dt * 2000, 1e9, [100.0])
    large = bench._row("l", [5e-3], lambda dt: dt * 500, 1e9, [100.0])
    fixed, per_point = bench.step_split(small, large)
    assert fixed == pytest.approx(1e-3) and per_point == pytest.approx(40e-6)
    # the epoch-time ratio is exactly x1.3 at the allowed fixed cost, and above beyond it
    def ratio(f, p):
        return ((f + 25 * p) / 25) / ((f + 100 * p) / 100)
    allowed = bench.fixed_allowed(per_point)
    assert allowed == pytest.approx(per_point * 750 / 67.5)
    assert ratio(allowed, per_point) == pytest.approx(1.3)
    assert ratio(fixed, per_point) > 1.3 > ratio(0.9 * allowed, per_point)


def test_run_pairs_the_batch_sizes_repeat_by_repeat():
    lines = []
    out = bench.run(quick=True, log=lines.append, only="rws sbn:200 K=5 B=", repeats=2)
    assert out["repeats"] == 2 and [len(r["calibrated_repeats"]) for r in out["rows"]] == [2, 2]
    # batch 25 over batch 100, turn by turn (not the other way round, not across turns)
    rows = {r["case"]: r["calibrated_repeats"] for r in out["rows"]}
    turns = [s / l for s, l in zip(rows["rws sbn:200 K=5 B=25"], rows["rws sbn:200 K=5 B=100"])]
    paired = out["batch25_over_batch100_paired"]["rws sbn:200 K=5"]
    assert paired == {"median": pytest.approx(sum(turns) / 2), "min": min(turns),
                      "max": max(turns)}
    assert any("median of the repeats paired turn by turn" in line for line in lines)
    split = out["batch_step_split"]["rws sbn:200 K=5"]
    by_case = {r["case"]: r["seconds_per_step"] for r in out["rows"]}
    assert split["fixed_seconds"] + 25 * split["seconds_per_point"] == pytest.approx(
        by_case["rws sbn:200 K=5 B=25"])
    assert split["fixed_seconds"] + 100 * split["seconds_per_point"] == pytest.approx(
        by_case["rws sbn:200 K=5 B=100"])
    # the replayed products are the step's own: the five GEMMs of the closed form (Q on
    # data and dreams, P on dreams and on the proposals, one weight gradient per layer),
    # with the hand count's FLOPs
    arith = split["arithmetic"]
    assert arith["products"] == 5
    assert arith["gflop"] == [pytest.approx(minimal_rws_flops([784, 200], B, 5) / 1e9)
                              for B in (25, 100)]
    assert any("matrix products and the optimiser alone" in line for line in lines)


def test_arithmetic_split_is_the_line_of_the_products_and_the_optimiser():
    # products 0.6 / 2.1 ms and the optimiser 0.4 ms at batch 25 / 100: 0.5 ms + 20 us a
    # point; alone an epoch ratio of (1.0 / 25) / (2.5 / 100) = x1.6
    small = bench.StepArithmetic(5, 0.6e-3, 0.1, 0.4e-3)
    large = bench.StepArithmetic(5, 2.1e-3, 0.4, 0.4e-3)
    # the whole step 1 ms + 40 us a point: x1.3 allows 40e-6 * 750 / 67.5 = 0.444 ms
    arith = bench.arithmetic_split(small, large, 1e-3, 40e-6)
    assert arith["seconds"] == [pytest.approx(1.0e-3), pytest.approx(2.5e-3)]
    assert arith["fixed_seconds"] == pytest.approx(0.5e-3)
    assert arith["seconds_per_point"] == pytest.approx(20e-6)
    assert arith["epoch_ratio"] == pytest.approx(1.6)
    assert arith["rest_fixed_seconds_allowed"] == pytest.approx(40e-6 * 750 / 67.5 - 0.5e-3)


def test_fastest_seconds_takes_the_fastest_of_its_timings(monkeypatch):
    """One untimed call, then ``repeats`` timings of ``calls`` calls; a call's time in the
    fastest timing (a clock that each call moves on by 2 s, by 1 s in the third timing)."""
    clock, made = [0.0], []

    def fn():
        made.append(1)
        clock[0] += 1.0 if 1 + 2 * 4 < len(made) <= 1 + 3 * 4 else 2.0
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    assert bench.fastest_seconds(fn, repeats=5, calls=4) == 1.0
    assert len(made) == 1 + 5 * 4


def test_replayed_products_keep_their_operands_layouts_and_values():
    """The replay runs the GEMMs MKL saw: a transposed operand stays transposed (a copy
    in the contiguous layout would time another kernel), out= products write their own
    copy, and other operations are not recorded."""
    torch.manual_seed(0)
    a, w, bias = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    out = torch.empty(5, 3)
    with bench._ProductRecorder() as rec:
        y = torch.addmm(bias, a, w.t())                 # a w^T + bias, w^T a view
        torch.mm(a, w.t(), out=out)
        torch.sigmoid(y)
    assert len(rec.calls) == 2
    (_, args, _), (_, args2, kwargs2) = rec.calls
    assert args[2].stride() == w.t().stride() == (1, 7)
    assert [t.data_ptr() for t in args] != [bias.data_ptr(), a.data_ptr(), w.data_ptr()]
    assert kwargs2["out"].data_ptr() != out.data_ptr()
    out.zero_()
    rec.replay()
    assert out.abs().sum() == 0                          # the original out untouched
    torch.testing.assert_close(kwargs2["out"], a @ w.t())


def test_evaluation_flops_are_the_float32_products_of_the_proposals():
    """Q_0 once per point, P_0 once per proposal, and the data term's x W (once per
    point) and its matrix-vector product with each proposal; the int8 path is counted
    as the float32 computation it replaces."""
    from rws import int8
    torch.manual_seed(0)
    model = zoo.build("sbn:200", 784)
    x = torch.bernoulli(torch.full((2, 784), 0.2))
    B, K, D, n = 2, 300, 784, 200
    with torch.inference_mode(), int8.turned_off():
        flops = bench.count_flops(lambda: model.log_weights(x, K))
    assert flops == 2 * B * D * n + 2 * B * K * n * D + 2 * B * D * n + 2 * B * K * n


@pytest.mark.parametrize("dreams", [1, None])
def test_pyro_comparison_times_both_sides(dreams):
    pytest.importorskip("pyro")
    x = torch.bernoulli(torch.full((40, 784), 0.2))
    cmp = bench.compare_with_pyro(x, K=2, steps=2, batch_size=20, repeats=1,
                                  dreams_per_point=dreams)
    assert cmp["seconds_per_step"] > 0 and cmp["ours_seconds_per_step"] > 0
    assert cmp["speedup"] == pytest.approx(cmp["seconds_per_step"] / cmp["ours_seconds_per_step"])


def _compare_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[1] / "benchmarks" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regression_check_uses_machine_units(tmp_path):
    """cost = fastest round x the run's fastest calibration: a machine twice as fast
    cancels out, a benchmark 1.5x slower in machine units is flagged."""
    import json

    def run(path, rows):
        path.write_text(json.dumps({"benchmarks": [
            {"name": n, "stats": {"min": t, "median": 9.9}, "extra_info": {"matmul_gflops": r}}
            for n, t, r in rows]}))
        return str(path)

    compare = _compare_module()
    base = run(tmp_path / "base.json", [("a", 1.0, 100.0), ("b", 2.0, 50.0)])
    same = run(tmp_path / "same.json", [("a", 0.5, 200.0), ("b", 1.0, 120.0)])
    slow = run(tmp_path / "slow.json", [("a", 0.5, 200.0), ("b", 1.5, 120.0)])
    assert compare.costs(base) == {"a": 100.0, "b": 200.0}
    assert compare.main([base, same, "--threshold", "0.3"]) == 0
    assert compare.main([base, slow, "--threshold", "0.3"]) == 1


def test_regression_check_judges_each_benchmark_against_the_runs_drift(tmp_path):
    """A loaded spell slows every benchmark alike (the drift, the median ratio); a
    regression stands out from it. Everything much slower fails as a whole."""
    import json

    def run(name, factors):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"benchmarks": [
            {"name": n, "stats": {"min": f}, "extra_info": {"matmul_gflops": 100.0}}
            for n, f in zip("abcde", factors)]}))
        return str(path)

    compare = _compare_module()
    base = run("base", [1, 1, 1, 1, 1])
    assert compare.main([base, run("loaded", [1.35, 1.25, 1.3, 1.2, 1.4]), "--threshold", "0.3"]) == 0
    assert compare.main([base, run("one_slow", [1.2, 1.2, 1.7, 1.2, 1.2]), "--threshold", "0.3"]) == 1
    assert compare.main([base, run("one_slow_quiet", [1.0, 1.0, 1.35, 1.0, 0.9]), "--threshold", "0.3"]) == 1
    assert compare.main([base, run("faster", [0.7, 0.7, 0.7, 0.7, 0.95]), "--threshold", "0.3"]) == 0
    assert compare.main([base, run("all_slow", [1.7, 1.7, 1.7, 1.7, 1.7]), "--threshold", "0.3"]) == 1


def test_an_injected_slowdown_fails_the_comparison_and_is_named(tmp_path, capsys):
    """A real pytest-benchmark record of this suite, and the same with one benchmark
    made 3x slower: the comparison fails and names it with its ratio; the record
    against itself passes."""
    import json
    from pathlib import Path
    compare = _compare_module()
    base = Path(__file__).parents[1] / "results" / "benchmarks" / "baseline.json"
    data = json.loads(base.read_text())
    victim = data["benchmarks"][0]["name"]
    data["benchmarks"][0]["stats"]["min"] *= 3.0
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(data))
    threshold = ["--threshold", "1.5", "--suite-threshold", "0.6"]      # as .ci/run
    assert compare.main([str(base), str(base), *threshold]) == 0
    capsys.readouterr()
    assert compare.main([str(base), str(slow), *threshold]) == 1
    out = capsys.readouterr().out
    assert f"REGRESSION: {victim} x3.00 the baseline's cost (limit x2.50)" in out


def test_work_counts_the_sigmoids_and_vector_products_of_a_nade(monkeypatch):
    """NADE log_prob over D units with H hidden units, R rows, in torch: per unit a
    sigmoid of [R, H], a matrix-vector product [R, H] x [H] and a rank-1 update
    [R] x [H]; then one log-sigmoid per unit and row for the Bernoulli log-probability."""
    monkeypatch.setenv("RWS_NUMBA", "0")
    D, H, R = 7, 5, 11
    nade = layers.NADE(D, 0, hidden=H)
    x = torch.bernoulli(torch.full((R, D), 0.5))
    with torch.no_grad():
        work = bench.count_work(lambda: nade.log_prob(x))
    assert work == bench.Work(matmul_flops=0, vector_flops=2 * 2 * D * R * H,
                              transcendentals=D * R * H + D * R)
    grad = bench.count_work(lambda: nade.log_prob(x).sum().backward())
    assert grad.transcendentals == 2 * work.transcendentals     # backward recomputes h


@pytest.mark.parametrize("numba", ["0", "1"])
def test_work_leaves_out_the_products_with_a_darn_masks_zeros(monkeypatch, numba):
    """A DARN's dense x (W * M) and (x^T G) * M multiply all D^2 weights; the floor counts
    the D (D - 1) / 2 of the strict upper triangle and y U in full: forward and weight
    gradients, 2 R (n_y D + D (D - 1) / 2) FLOPs each."""
    monkeypatch.setenv("RWS_NUMBA", numba)
    D, n_y, R = 6, 4, 9
    darn = layers.DARN(D, n_y)
    x = torch.bernoulli(torch.full((R, D), 0.7))      # dense: the GEMMs, not the lists
    x[0] = 1
    y = torch.ones(R, n_y)
    work = bench.count_work(lambda: darn.log_prob(x, y).sum().backward())
    assert work.matmul_flops == 2 * 2 * R * (n_y * D + D * D)
    assert work.masked_flops == 2 * 2 * R * (D * D - D * (D - 1) // 2)
    assert work.floor(1.0, math.inf) == pytest.approx(
        2 * 2 * R * (n_y * D + D * (D - 1) // 2) / 1e9)


def test_floor_divides_each_count_by_its_rate():
    work = bench.Work(matmul_flops=3e9, vector_flops=1e9, transcendentals=2e9)
    assert work.floor(gflops=100.0, gsigmoids=0.5) == pytest.approx(4 / 100 + 2 / 0.5)
    row = bench._row("r", [3.0, 1.0], lambda dt: dt, 3e9, [100.0, 50.0], work, [0.5, 0.25])
    assert row.floor_seconds == pytest.approx(4.04)
    assert row.fraction_of_floor == pytest.approx(4.04 / 1.0)
    assert row.gsigmoid_per_step == pytest.approx(2.0)
    assert row.work == {"matmul_flops": 3e9, "vector_flops": 1e9, "transcendentals": 2e9,
                        "masked_flops": 0}


@pytest.mark.skipif(not ar_kernels.available(), reason="the compiled kernels are off")
def test_work_counts_what_the_compiled_ar_kernels_do():
    """The kernels skip the rank-1 update where x_i = 0: R D H dot products, and an
    update of H per nonzero x_i; the backward pass runs the updates down again (from a_D,
    which the forward pass saved), one more per nonzero x_i (dW), two H-vector updates
    per unit (dV and the run's sum e), and d += h (1 - h) e once per run. They
    evaluate the H hidden sigmoids once per row and again only where a changed: after
    each x_i = 1 that feeds a later unit (forward); walking down, at each x_i = 1 below
    the last unit and at each re-anchoring (unit 0 here, D < 64)."""
    pytest.importorskip("numba")
    D, H, R = 7, 5, 11
    nade = layers.NADE(D, 0, hidden=H)
    x = torch.bernoulli(torch.full((R, D), 0.3))
    x[0], x[1] = 0, 1
    nnz = int(x.count_nonzero())
    with torch.no_grad():
        work = bench.count_work(lambda: nade.log_prob(x))
    evaluations_up = R + int(x[:, :D - 1].count_nonzero())
    assert work == bench.Work(0, 2 * R * D * H + 2 * nnz * H, evaluations_up * H + R * D)
    grad = bench.count_work(lambda: nade.log_prob(x).sum().backward())
    # backward: g = dL/ds = x - sigmoid(s) is nonzero everywhere
    evaluations_down = R + R + int(x[:, 1:D - 1].count_nonzero())
    assert grad.vector_flops == (work.vector_flops + 4 * nnz * H + 4 * R * D * H
                                 + 2 * evaluations_down * H)
    # the log-probability's R D exponentials once: its backward reuses their sigmoids
    assert grad.transcendentals == (evaluations_up + evaluations_down) * H + R * D
