"""Compare two pytest-benchmark JSON files in units of the machine's matmul speed.

    python benchmarks/compare.py BASELINE.json NEW.json [--threshold 1.5] [--suite-threshold 0.6]

For each benchmark, cost = fastest round's seconds x the run's matmul GFLOP/s (the GFLOP
of matmul work the machine could have done in that time), so a faster or slower machine
cancels out. Both at their best, because a neighbour on a shared machine only adds time,
and more to elementwise work than to the calibration GEMM: the fastest round of each
benchmark, and the fastest of the calibrations taken before each benchmark of the run.

That calibration does not cancel a loaded spell of a shared machine: it slows every
benchmark's elementwise work and dispatch by about the same factor (on this project's
2-core VM, 1.1-1.3x for minutes at a time), which the best calibration GEMM does not
see. So each benchmark is judged against the run's drift, the median of the cost
ratios: a code regression makes one path stand out from the others. Exits 1 if a
benchmark's cost ratio exceeds (1 + threshold) x max(drift, 1) (default 150%), or if the
drift itself exceeds 1 + suite-threshold (default 60%: everything slower at once). The
defaults are above the worst deviations of unchanged trees on the project's 2-core VM
(README, "Speed regressions"), so that they never fire there without a change.
"""
import argparse
import json
import statistics
import sys


def costs(path):
    with open(path) as f:
        data = json.load(f)
    rates = [b["extra_info"].get("matmul_gflops") or 0.0 for b in data["benchmarks"]]
    rate = max(rates, default=0.0)
    return {b["name"]: b["stats"]["min"] * rate for b in data["benchmarks"]} if rate else {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("baseline")
    p.add_argument("new")
    p.add_argument("--threshold", type=float, default=1.5)
    p.add_argument("--suite-threshold", type=float, default=0.6)
    args = p.parse_args(argv)
    base, new = costs(args.baseline), costs(args.new)
    names = sorted(base.keys() & new.keys())
    ratios = {name: new[name] / base[name] for name in names}
    drift = statistics.median(ratios.values()) if len(ratios) >= 3 else 1.0
    limit = (1 + args.threshold) * max(drift, 1.0)
    worse = []
    print(f"{'benchmark':50s} {'baseline':>10s} {'new':>10s} {'ratio':>7s}")
    for name in names:
        flag = "  REGRESSION" if ratios[name] > limit else ""
        print(f"{name:50s} {base[name]:10.3f} {new[name]:10.3f} {ratios[name]:7.2f}{flag}")
        if flag:
            worse.append(name)
    print(f"drift of the whole run (median ratio): x{drift:.2f}; a benchmark regresses "
          f"beyond x{limit:.2f}")
    missing = sorted(base.keys() - new.keys())
    if missing:
        print(f"not in the new run: {missing}")
    status = 0
    if worse:
        print(f"{len(worse)} benchmark(s) slower than the baseline by more than "
              f"{args.threshold:.0%} beyond the run's drift, in machine matmul units")
        for name in worse:
            print(f"REGRESSION: {name} x{ratios[name]:.2f} the baseline's cost "
                  f"(limit x{limit:.2f})")
        status = 1
    if drift > 1 + args.suite_threshold:
        print(f"the whole run is x{drift:.2f} slower than the baseline in machine units "
              f"(more than {args.suite_threshold:.0%}): a regression everywhere, or a "
              "machine far busier than the calibration shows; rerun to tell which")
        status = 1
    if not status:
        print("no regression beyond the threshold")
    return status


if __name__ == "__main__":
    sys.exit(main())
