"""The five scenes of `make demo` and the story that plays them in one sandbox."""

from __future__ import annotations

import shlex
import textwrap
import time
from collections.abc import Callable
from types import ModuleType

from demo_output import S, mark, out, outcome, para, shell, table
from demo_story import (
    API,
    BLUE,
    CLEAR,
    GATEWAY,
    GREEN,
    PUSHGATEWAY,
    REFUSED,
    SIGNALLED,
    STOPPED,
    WAITING,
    Story,
    Unexpected,
    expect,
    setup,
)
from demo_why import scene_why


def scene_remnant(st: Story) -> str:
    st.systemctl("start", BLUE, show=False)
    st.listening(8080)
    old_main = st.main_pid(BLUE)
    para(f"web@blue runs (main pid {old_main} and its worker). Its main process crashes; "
         "the worker stays in the unit's cgroup, still listening on 8080.", "  ")
    shell(f"systemctl kill --kill-who=main --signal=SIGKILL {BLUE}", "the crash")
    st.sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", BLUE, check=True)
    st.sb.wait_unit_state(BLUE, "failed", "inactive")
    _, signalled = st.guarded("restart", BLUE, "8080", (SIGNALLED, {"holder_kind": "self"}))
    remnant = int(signalled["PORTGUARD_HOLDER_PID"])
    expect(st.wait_dead(remnant), f"the remnant (pid {remnant}) is still running")
    state = st.expect_state(BLUE, "active")
    return (f"{BLUE} {state} again, new main pid {st.main_pid(BLUE)}; the remnant "
            f"(pid {remnant}) got SIGTERM through a pidfd and is gone")


def scene_twin(st: Story) -> str:
    para("A blue/green deploy: web@green starts while web@blue still serves 8080. Both "
         "are instances of web@.service: blue is green's twin.", "  ")
    blue_pid = st.main_pid(BLUE)
    st.guarded("start", GREEN, "8080", (STOPPED, {"holder_kind": "twin", "holder_unit": BLUE}))
    states = st.state(GREEN), st.state(BLUE)
    expect(states[0].startswith("active") and states[1].startswith("inactive"),
           f"{GREEN} is {states[0]}, {BLUE} is {states[1]}")
    expect(not st.sb.pid_alive(blue_pid), f"{BLUE}'s pid {blue_pid} is still running")
    return (f"{GREEN} {states[0]}; {BLUE} {states[1]}: stopped through systemd "
            "(StopUnit), not killed behind its back")


def scene_stray(st: Story) -> str:
    argv = st.program("webd", "--port", "8080", "--workers", "1")
    para("Someone stopped web@green to debug it, ran its command by hand in a tmux, and "
         "forgot it there.", "  ")
    st.systemctl("stop", GREEN)
    shell(shlex.join(argv) + " &", "in a tmux: outside any unit")
    stray = st.spawn(argv)
    st.listening(8080, stray)
    st.guarded("start", GREEN, "8080",
               (SIGNALLED, {"holder_kind": "stray", "holder_pid": str(stray)}))
    expect(st.wait_dead(stray), f"the stray (pid {stray}) is still running")
    state = st.expect_state(GREEN, "active")
    return (f"{GREEN} {state}; the stray (pid {stray}: the unit's ExecStart= exactly, "
            "its user, outside any unit) got SIGTERM through a pidfd and is gone")


def scene_foreign(st: Story) -> str:
    para("Prometheus' Pushgateway listens on 9091 by default: the port metrics-gateway "
         "declares. A different program in another unit: a foreign holder.", "  ")
    st.systemctl("start", PUSHGATEWAY, show=False)
    holder = st.main_pid(PUSHGATEWAY)
    st.listening(9091, holder)
    # succeeds=None: what the administrator reads comes before the exit status is checked
    done, refused = st.guarded("start", GATEWAY, "9091",
                               (REFUSED, {"holder_kind": "foreign", "holder_unit": PUSHGATEWAY}),
                               succeeds=None)
    out(f"  {S.bold('what the administrator reads:')} {S.dim(f'journalctl -u {GATEWAY}')}")
    for r in st.sb.journal("-u", GATEWAY, since_cursor=st.cursor):
        text = r["MESSAGE"] if isinstance(r.get("MESSAGE"), str) else ""
        if text.startswith("portguard:") or "Control process exited" in text:
            out(textwrap.fill(text, S.width, initial_indent="    ",
                              subsequent_indent="      ", break_on_hyphens=False))
    expect(done.returncode != 0, f"systemctl start {GATEWAY} succeeded")
    state = st.expect_state(GATEWAY, "failed")
    expect(st.state(PUSHGATEWAY).startswith("active") and st.main_pid(PUSHGATEWAY) == holder,
           f"{PUSHGATEWAY} was touched")
    expect(refused["PORTGUARD_ACTION"] == "refuse", "not refused")
    para("A foreign holder is never stopped or signalled. With on_foreign: fail (the "
         "default, metrics-gateway's) preflight refuses at once, exit 1, and the unit never "
         "runs; with on_foreign: wait (api's) it would wait, up to the service's timeout, "
         "for the holder to go.", "  ")
    return (f"{GATEWAY} {state} (preflight exited 1; its program never ran); {PUSHGATEWAY} "
            f"untouched (pid {holder})")


def scene_lingering(st: Story) -> str:
    para("A client is connected when the service stops: the server side closes first and "
         "lingers in TIME_WAIT for 60 s. web sets SO_REUSEADDR (reuse_address: true, the "
         "default), which binds anyway:", "  ")
    st.time_wait(GREEN, 8080)
    st.guarded("start", GREEN, "8080", (CLEAR, {"result": "clear"}))
    web_state = st.expect_state(GREEN, "active")
    outcome(f"{GREEN} {web_state}: the TIME_WAIT socket did not block it")
    out()

    para("api has reuse_address: false (apid does not set SO_REUSEADDR): its bind() "
         "fails until the TIME_WAIT expires, so portguard waits (up to api's timeout: 1m). "
         "The demo starts it with --no-block, shows the wait, and cancels it rather than "
         "sit out 60 s:", "  ")
    st.systemctl("start", API, show=False)
    st.listening(9100)
    st.time_wait(API, 9100)
    st.guarded("start", API, "9100", (WAITING, {"holder_kind": "lingering", "result": "waiting"}),
               "--no-block", until=lambda r: r.get("MESSAGE_ID") == WAITING, succeeds=None)
    waiting_state = st.state(API)  # preflight waits up to api's timeout: 1m
    expect(waiting_state.startswith("activating"), f"{API} is {waiting_state} while waiting")
    para(f"Meanwhile {API} is {waiting_state}: it starts once the port is free, or fails "
         "with preflight's exit 75 after its timeout.", "  ")
    st.systemctl("stop", API)
    st.sb.wait_unit_state(API, "inactive", "failed")
    return (f"{GREEN} active (passed at once); {API} waited in {waiting_state} for the "
            "TIME_WAIT to expire, until the demo cancelled it")


SCENES: list[tuple[str, str, Callable[[Story], str]]] = [
    ("self", "A remnant of web@blue's previous run holds 8080", scene_remnant),
    ("twin", "Blue/green: web@green starts while web@blue holds 8080", scene_twin),
    ("stray", "A copy of webd left running by hand holds 8080", scene_stray),
    ("foreign", "Another program holds metrics-gateway's port 9091", scene_foreign),
    ("lingering", "TIME_WAIT after a fast restart", scene_lingering),
    ("why", "After the fact: a unit that failed to bind, explained", scene_why),
]


def run_story(sandbox_mod: ModuleType) -> int:
    t0 = time.monotonic()
    results: list[tuple[str, str, bool, str]] = []
    out(S.bold("portguard demo: five ways a port is taken, what portguard does about each, "
               "and `portguard why` after a failure"))
    out()
    with sandbox_mod.Sandbox() as sb:
        st = Story(sb, sandbox_mod)
        try:
            setup(st)
        except (Unexpected, sandbox_mod.SandboxError) as exc:
            out(f"  {mark(False)} setup failed: {exc}")
            return 1
        for n, (kind, title, scene) in enumerate(SCENES, start=1):
            out()
            head = f"── {n}/{len(SCENES)}  {title}  [{kind}] "
            out(S.bold(head + "─" * max(3, S.width - len(head))))
            try:
                said = scene(st)
                ok = True
            except Unexpected as exc:
                said, ok = f"not as expected: {exc}", False
            except Exception as exc:  # a demo bug: tell the rest of the story anyway
                said, ok = f"the demo failed here: {type(exc).__name__}: {exc}", False
            outcome(said, ok)
            results.append((kind, title, ok, said))
        for pid in st.spawned:  # the clients have exited; anything else dies with PID 1
            if sb.pid_alive(pid):
                sb.kill(pid)
    took = time.monotonic() - t0
    passed = sum(1 for r in results if r[2])
    out()
    out(S.bold("Summary"))
    table([("", "KIND", "SCENE"), *((mark(ok), kind, title) for kind, title, ok, _ in results)],
          indent="  ")
    out()
    if passed == len(results):
        out(S.green(f"All {len(results)} scenes behaved as expected") +
            f" in {took:.1f} s. The sandbox is gone; this host was not touched.")
        out(S.dim("Next: docs/commands.md, docs/journal.md, config.example.yaml, "
                  "`portguard install UNIT` on your own services."))
        return 0
    out(S.red(f"{len(results) - passed} of {len(results)} scenes did not behave as "
              f"expected") + f" ({took:.1f} s). Please report this with the output above.")
    return 1
