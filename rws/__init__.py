"""rws-bench: Reweighted Wake-Sleep and its baselines on one model zoo and one harness."""
__version__ = "0.1.0"
