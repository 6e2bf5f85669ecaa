"""The soak: randomized preflight scenarios in the sandbox, in the order a scenario meets them.

world (names, ids, units inside the sandbox) and programs (the holder and helper run
there); model (scenarios, outcomes); generator (scenario N of a seed) and oracle (what
the contract (docs/) says portguard does with it); lane (setting it up and running preflight),
leaver (holders leaving mid-wait), checks and journal (the verdict); runner (lanes side
by side). `tests/integration/test_soak.py` runs a bounded soak; `bench/soak.py` (`make
soak`) the long one, and writes its report to bench/RESULTS.md.
"""
