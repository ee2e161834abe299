"""Speed and quality benchmarks of lposs: run as modules (`python -m benchmarks.refine ...`).

They print a table and write JSON; nothing here is imported by the package or timed in the tests.
"""
