"""Scenario N of a seed: holders, ports and a config drawn from the seed and N alone."""

from __future__ import annotations

import random

from support.soak.model import HolderSpec, Scenario
from support.soak.oracle import budget, decide, expected_kind, profile_uid
from support.soak.world import (
    FIRST_PORT,
    MADE,
    MADE_WEIGHTS,
    NOBODY,
    POLICIES,
    POLICY_WEIGHTS,
    PORT_SPAN,
    PROFILE_WEIGHTS,
    PROFILES,
    WAIT,
)


def scenario_ports(n: int, count: int) -> tuple[int, ...]:
    base = FIRST_PORT + 2 * (n % (PORT_SPAN // 2))
    return tuple(base + i for i in range(count))


def _pick_made(rng: random.Random, count: int, proto: str, n_ports: int) -> list[str]:
    made: list[str] = []
    while len(made) < count:
        m = rng.choices(MADE, MADE_WEIGHTS)[0]
        if m == "remnant" and "remnant" in made:
            continue
        if m == "lingering" and (proto == "udp" or made.count("lingering") >= n_ports):
            continue
        made.append(m)
    return made


VARIANTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    # foreign: a unit running the service's exact argv / another program; a process
    # outside any unit running another program; the exact argv as another user
    # outside any unit running another program; the exact argv as another user; another
    # program as the profile's user
    "foreign": (("unit-same", "unit-other", "proc", "user", "profile-other"),
                (25, 20, 30, 25, 20)),
    # twin: another instance; a duplicates.units unit; an instance that is up but holds
    # nothing yet; a failed instance whose worker still holds the port
    "twin": (("instance", "dup", "idle", "remnant"), (50, 20, 15, 15)),
    # stray: started by hand (no unit); in a session-like scope; another argv that
    # duplicates.commands matches; by hand as the profile's user (a stray only by a
    # usable profile)
    "stray": (("bare", "scope", "cmdglob", "profile"), (50, 30, 20, 30)),
    "remnant": (("workers",), (1,)),
    "lingering": (("time-wait",), (1,)),
    "protected": (("twin", "scope"), (50, 50)),
}


def make_scenario(seed: int, n: int) -> Scenario:
    """Scenario `n` of `seed`: the same on every run and in any lane."""
    rng = random.Random(f"portguard-soak:{seed}:{n}")
    proto = "udp" if rng.random() < 0.1 else "tcp"
    ports = scenario_ports(n, 2 if rng.random() < 0.4 else 1)
    dry_run = rng.random() < 0.05
    sc = Scenario(
        n=n, seed=seed, proto=proto, ports=ports,
        user=NOBODY if rng.random() < 0.25 else 0,
        policy=rng.choices(POLICIES, POLICY_WEIGHTS)[0],
        on_foreign=rng.choice(("fail", "wait")),
        timeout=0.0,
        kill_after=rng.choice((0.2, 0.3, 0.5)),
        signal=rng.choice(("SIGTERM", "SIGTERM", "SIGTERM", "SIGINT", "SIGHUP")),
        reuse=rng.random() < 0.7,
        dups_listed=rng.random() < 0.7,
        cmds_listed=rng.random() < 0.5,
        dry_run=dry_run,
        via_unit=not dry_run and rng.random() < 0.2,
        holders=[],
    )
    sc.profile = rng.choices(PROFILES, PROFILE_WEIGHTS)[0]
    made = _pick_made(rng, rng.randint(1, 4), proto, len(ports))
    free_for_tw = list(ports)
    rng.shuffle(free_for_tw)
    v6_used = False
    for i, m in enumerate(made):
        names, weights = VARIANTS[m]
        variant = rng.choices(names, weights)[0]
        h = HolderSpec(index=i, made=m, variant=variant, ports=(), addr=f"127.0.0.{10 + i}",
                       uid=sc.user)
        if m == "lingering":
            h.ports = (free_for_tw.pop(),)
            h.addr = f"127.0.0.{100 + i}"
            h.tw_reuse = rng.random() < 0.5
        elif not (m == "twin" and variant == "idle"):
            h.ports = tuple(p for p in ports if rng.random() < 0.7) or (rng.choice(ports),)
            if proto == "tcp" and not v6_used and rng.random() < 0.1:
                h.addr, v6_used = "::1", True
        if m == "foreign" and variant == "user":
            h.uid = 0 if sc.user else NOBODY
        elif variant in ("profile", "profile-other"):
            h.uid = profile_uid(sc)
        elif m == "foreign" and variant == "proc":
            h.uid = rng.choice((0, NOBODY))
        broken = m == "remnant" or (m, variant) == ("twin", "remnant")
        if broken or (h.live and h.ports and rng.random() < 0.2):
            h.workers = rng.randint(1, 2)
        h.stubborn = h.live and rng.random() < 0.25
        sc.holders.append(h)
    for h in sc.holders:
        h.kind, h.protected = expected_kind(sc, h)
        h.action = decide(sc, h)
    base = rng.choice((0.6, 0.9, 1.2))
    for h in sc.holders:  # only a holder that is waited for may leave by itself
        # (not a remnant: its main process is gone, nobody is left to decide to leave)
        broken = h.made == "remnant" or (h.made, h.variant) == ("twin", "remnant")
        if h.action == WAIT and h.live and not broken and rng.random() < 0.5:
            h.racing = rng.random() < 0.2
            h.leave = round(rng.uniform(0.1 if h.racing else 0.0, 0.4 * base), 3)
    # a holder leaving after portguard starts waiting needs the wait to have begun in
    # time: half a second more (a preflight as ExecStartPre= under load starts late)
    calm = any(h.leave is not None and not h.racing for h in sc.holders)
    sc.timeout = round(base + budget(sc) + (0.5 if calm else 0.0), 2)
    return sc
