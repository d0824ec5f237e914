"""Benchmarks: every hot path of credits-db measured next to its bare-SQL baseline.

``python -m bench [--url URL] [--quick] [--out DIR]`` creates its own databases
on the server it is given (an embedded PostgreSQL by default), runs each
workload alternating with its baseline (A B A B ...), and writes
``results.md`` and ``results.json``. See docs/performance.md.
"""
