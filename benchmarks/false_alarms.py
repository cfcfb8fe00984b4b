"""The false-alarm margin of the speed gate: pytest-benchmark runs of one unchanged tree,
compared pairwise the way ``compare.py`` compares a run with the baseline.

    python benchmarks/false_alarms.py RUN1.json RUN2.json ... [--threshold 1.5 --suite-threshold 0.6]

For every ordered pair (baseline, new) it takes each benchmark's cost ratio over the
run's drift (the median ratio, at least 1) and the drift itself, and prints the worst
of each and how many pairs the thresholds would have failed. Set the thresholds above
the worst values, so that the gate never fires on an unchanged tree of this machine.
"""
import argparse
import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare import costs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--threshold", type=float, default=1.5)
    p.add_argument("--suite-threshold", type=float, default=0.6)
    args = p.parse_args(argv)
    runs = [costs(r) for r in args.runs]
    worst_rel, worst_drift, worst_name, fired, pairs = 0.0, 0.0, "", 0, 0
    for a, b in itertools.permutations(range(len(runs)), 2):
        names = runs[a].keys() & runs[b].keys()
        ratios = {n: runs[b][n] / runs[a][n] for n in names}
        drift = statistics.median(ratios.values())
        rel = {n: r / max(drift, 1.0) for n, r in ratios.items()}
        name = max(rel, key=rel.get)
        if rel[name] > worst_rel:
            worst_rel, worst_name = rel[name], name
        worst_drift = max(worst_drift, drift)
        fired += rel[name] > 1 + args.threshold or drift > 1 + args.suite_threshold
        pairs += 1
    print(f"{len(runs)} runs, {pairs} ordered pairs: worst benchmark x{worst_rel:.2f} the "
          f"run's drift ({worst_name}), worst drift x{worst_drift:.2f}; thresholds "
          f"{args.threshold} / {args.suite_threshold} fail {fired} of {pairs} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
