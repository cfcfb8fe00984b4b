"""Compare two pytest-benchmark JSON files in units of the machine's matmul speed.

    python benchmarks/compare.py BASELINE.json NEW.json [--threshold 0.3]

For each benchmark, cost = fastest round's seconds x the run's matmul GFLOP/s (the GFLOP
of matmul work the machine could have done in that time), so a faster or slower machine
cancels out. Both at their best, because a neighbour on a shared machine only adds time,
and more to elementwise work than to the calibration GEMM: the fastest round of each
benchmark, and the fastest of the calibrations taken before each benchmark of the run. Exits 1 if any benchmark's cost grew by more than the
threshold (default 30%: these machines are shared and noisy).
"""
import argparse
import json
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
    p.add_argument("--threshold", type=float, default=0.3)
    args = p.parse_args(argv)
    base, new = costs(args.baseline), costs(args.new)
    worse = []
    print(f"{'benchmark':50s} {'baseline':>10s} {'new':>10s} {'ratio':>7s}")
    for name in sorted(base.keys() & new.keys()):
        ratio = new[name] / base[name]
        flag = "  REGRESSION" if ratio > 1 + args.threshold else ""
        print(f"{name:50s} {base[name]:10.3f} {new[name]:10.3f} {ratio:7.2f}{flag}")
        if flag:
            worse.append(name)
    missing = sorted(base.keys() - new.keys())
    if missing:
        print(f"not in the new run: {missing}")
    if worse:
        print(f"{len(worse)} benchmark(s) slower than the baseline by more than "
              f"{args.threshold:.0%} of the machine's matmul speed")
        return 1
    print("no regression beyond the threshold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
