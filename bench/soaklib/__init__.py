"""bench/soak.py's parts, in the order a scenario meets them.

world (names, ids, units inside the sandbox) and programs (the holder and helper run
there); model (scenarios, outcomes); generator (scenario N of a seed) and oracle (what
the contract (docs/) says portguard does with it); lane (setting it up and running preflight),
leaver (holders leaving mid-wait), checks and journal (the verdict); runner (lanes side
by side) and report (the "## Soak" section of bench/RESULTS.md).
"""
