"""The other methods of the suite, on rws's model zoo and harness."""
