"""The bind() oracle, a fixed seed (issue 12): portguard agrees with the kernel.

300 random service port specs (20 zoos of 15) on random socket zoos in the sandbox's
network namespace; `preflight --dry-run`, `status` and `who ADDR:PORT --[no-]reuse-address`
must each give the kernel's verdict and name exactly the pids of the sockets that
conflict (see bind_oracle.py for how the truth is found); and a plain `who PORT/PROTO`,
which skips sock_diag where a bind() probe shows the port empty, must list a socket
whenever the zoo made one of that protocol. A failure line names its seed and zoo;
replay it with `PYTHONPATH=tests .venv/bin/python -m support.bind_oracle --seeds N
--zoos Z --count 1 -v`. The long run is the same module without arguments (`make soak`).
"""

from __future__ import annotations

from support.bind_oracle import run
from support.sandbox import Sandbox

SEED, ZOOS, SPECS = 12, 20, 15


def test_portguard_agrees_with_bind_on_random_zoos(sandbox: Sandbox, uid: str) -> None:
    tally = run(sandbox, SEED, range(ZOOS), SPECS, uid)
    assert tally.clean(), tally.summary() + "\n" + "\n".join(tally.failures[:20])
    # not vacuous: both verdicts, and every kind of socket, as root and as nobody
    assert tally.specs >= 0.9 * ZOOS * SPECS, tally.summary()
    assert min(tally.mix["blocked"], tally.mix["free"]) >= 0.2 * tally.specs, tally.mix
    made = {k for k in tally.mix if " as " in k}
    for kind in ("tcp listen", "tcp bound", "tcp timewait", "udp bound"):
        assert {f"{kind} as root", f"{kind} as nobody"} & made, (kind, tally.mix)
    assert tally.mix["listing some"] and tally.mix["listing none"], tally.mix
    assert any(k.endswith("as nobody") for k in made) and any(
        k.endswith("as root") for k in made), tally.mix
