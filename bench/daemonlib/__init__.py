"""bench/daemon_cost.py's parts: the load and the measuring, the report."""
