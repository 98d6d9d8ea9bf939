"""Benchmarks of the control plane (``make bench``; see ``docs/performance.md``).

Speed lives here, never in the test suite. ``python -m bench.run --help`` lists the options.
"""
