"""bench/preflight_bench.py's parts: the scene, stages, proofs, the report."""
