"""Benchmark scripts and their parts (not installed with the package; see README.md).

``throughput.py`` is the harness; ``roofline.py``, ``measure.py``, ``phases.py`` and
``report.py`` are its parts. Run the scripts from the repository root, e.g.
``python benchmarks/throughput.py --quick``.
"""
