"""The oracle: what the contract (docs/) says preflight does with a scenario's holders.

Written from the contract's (docs/) rules (kinds and policies) and the README, not from portguard's
code, so that a bug in portguard cannot hide in the expectation too.
"""

from __future__ import annotations

from support.soak.model import Expected, HolderSpec, Scenario
from support.soak.world import (
    ACT,
    FOREIGN,
    LINGERING,
    NOBODY,
    NONE,
    REFUSE,
    SELF,
    STRAY,
    TOLERATE,
    TWIN,
    WAIT,
)


def expected_kind(sc: Scenario, h: HolderSpec) -> tuple[str, bool]:
    """(kind, protected) by DESIGN's rules, from how the holder was made."""
    if h.made == "remnant":
        return SELF, False  # in the unit's own cgroup
    if h.made == "lingering":
        return LINGERING, False
    if h.made == "protected":  # a twin instance, or a stray in a scope, listed in protected
        return (TWIN if h.variant == "twin" else STRAY), True
    if h.made == "twin":
        if h.variant == "dup":  # a twin only when duplicates.units names it
            return (TWIN if sc.dups_listed else FOREIGN), False
        return TWIN, False
    if h.made == "stray":
        if h.variant == "cmdglob":  # a stray only when duplicates.commands matches it
            return (STRAY if sc.cmds_listed else FOREIGN), False
        if h.variant == "profile":  # its program as the profile's user: only by a profile
            return (STRAY if sc.profile == "learned" else FOREIGN), False
        return STRAY, False
    if (h.made, h.variant) == ("foreign", "user") and sc.profile == "learned" and \
            h.uid == profile_uid(sc):
        return STRAY, False  # the program as another user, who is the profile's user
    # another unit; another program (as anyone, the profile's user too); the program as
    # another user without a usable profile saying that user runs it
    return FOREIGN, False


def profile_uid(sc: Scenario) -> int:
    """The profile's user: never the unit's own (root or nobody), so a profile is what
    decides whether the service's program run as that user is a stray."""
    return 0 if sc.user else NOBODY


def lingering_blocks(sc: Scenario, h: HolderSpec) -> bool:
    """A TIME_WAIT socket blocks bind() unless SO_REUSEADDR is set on both sides."""
    return not (sc.reuse and h.tw_reuse)


def decide(sc: Scenario, h: HolderSpec) -> str:
    """DESIGN's table: policy for self/twin/stray, on_foreign for foreign, lingering by
    SO_REUSEADDR; protected holders are refused when the policy would touch them."""
    if h.kind == LINGERING:
        return WAIT if lingering_blocks(sc, h) else NONE
    if h.kind == FOREIGN:
        return WAIT if sc.on_foreign == "wait" else REFUSE
    if sc.policy == "fail":
        return REFUSE
    if sc.policy == "warn":
        return TOLERATE
    if sc.policy == "wait":
        return WAIT
    return REFUSE if h.protected else ACT


def unprobeable(sc: Scenario, h: HolderSpec) -> bool:
    """A TIME_WAIT socket whose effect on a SO_REUSEADDR bind only bind() can tell (it
    blocks when its own socket lacked SO_REUSEADDR), while a live holder on the same
    port makes that bind() fail anyway: before acting, nobody can know what it does."""
    return h.kind == LINGERING and sc.reuse and any(
        o.live and h.ports[0] in o.ports for o in sc.holders)


def expect(sc: Scenario) -> Expected:
    """The oracle: what the contract (docs/) says preflight does with these holders."""
    actions = {h.index: h.action for h in sc.holders}
    refused = [h for h in sc.holders if h.action == REFUSE]
    # a holder vanishing while portguard inspects it may be taken for anything, and a
    # refusal (1) is then the worst that may happen (never a signal to a living process)
    racing = frozenset({1}) if any(h.racing for h in sc.holders) else frozenset()
    if refused:  # the whole plan is refused before anything is touched
        return Expected(1, frozenset(), False,
                        "refused: " + ", ".join(f"h{h.index}" for h in refused))
    if sc.dry_run:
        return Expected(0, frozenset(), False, "dry run: nothing touched", racing)
    permitted = frozenset(i for i, a in actions.items() if a == ACT)
    stuck = [h for h in sc.holders if h.action == WAIT and h.leave is None]
    if stuck:  # waited for, and they stay (a TIME_WAIT lasts 60 s)
        why = "waits time out on " + ", ".join(f"h{h.index}" for h in stuck)
        # policy warn lets the service try anyway, and a TIME_WAIT next to a live holder
        # cannot be told to block before that: with holders tolerated, 0 is fine too
        tolerated_over = all(unprobeable(sc, h) for h in stuck) and any(
            o.action == TOLERATE for o in sc.holders)
        return Expected(75, permitted, False, why,
                        (frozenset({0}) if tolerated_over else frozenset()) | racing)
    tolerated = any(h.action == TOLERATE for h in sc.holders)
    return Expected(0, permitted, not tolerated,
                    "warn: the service tries anyway" if tolerated else "cleared", racing)


def budget(sc: Scenario) -> float:
    """Time for the stops the oracle expects to complete inside `timeout` (so `stop` never
    runs into the deadline): kill_after per stubborn process, two per stubborn twin."""
    acting = [h for h in sc.holders if h.action == ACT]
    if not acting or any(h.action == REFUSE for h in sc.holders):
        return 0.0
    slow = 0
    for h in acting:
        if h.kind == TWIN:
            slow += 2 if (h.stubborn or h.variant == "remnant") else 1
        elif h.stubborn:
            slow += 1 + h.workers
    return sc.kill_after * slow + 1.5
