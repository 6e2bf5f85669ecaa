"""bench/who_bench.py's parts: checks against ss, timing, profiles, the report."""
