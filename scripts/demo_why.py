"""The demo's sixth scene: a unit that really failed to bind, explained by `portguard why`."""

from __future__ import annotations

import json

from demo_output import block, para
from demo_story import GATEWAY, PUSHGATEWAY, Story, expect


def scene_why(st: Story) -> str:
    para(f"On a host without portguard's guard the start is not refused: the program runs "
         f"and fails. The demo takes the guard off {GATEWAY} and starts it again while "
         f"{PUSHGATEWAY} still holds 9091:", "  ")
    done = st.portguard("uninstall", GATEWAY)
    expect(done.returncode == 0, f"portguard uninstall {GATEWAY} failed: {done.stderr}")
    st.sb.systemctl("reset-failed", GATEWAY)
    st.systemctl("start", GATEWAY)
    st.sb.wait_unit_state(GATEWAY, "failed")
    st.sb.wait_journal(lambda r: "Failed with result" in str(r.get("MESSAGE")), "-u", GATEWAY)
    para("What an administrator meets next is `failed` in `systemctl status`. One command "
         "reads the unit's last runs in the journal, finds the bind failure in the "
         "program's own words, and says who holds the port now and what to paste:", "  ")
    done = st.portguard("why", GATEWAY)
    block(done.stdout + done.stderr)
    expect(done.returncode == 1, f"why exited {done.returncode}, not 1 (a port still held)")
    doc = json.loads(st.portguard("--json", "why", GATEWAY, show=False).stdout)
    holders = {(h["unit"], h["kind"]) for p in doc["ports"] for h in p["holders"]}
    expect(holders == {(PUSHGATEWAY, "foreign")}, f"why named {holders}")
    command = doc["ports"][0]["next"][0]["command"]
    expect(command == f"systemctl stop {PUSHGATEWAY}", f"why advised {command!r}")
    st.systemctl("stop", PUSHGATEWAY)
    done = st.portguard("why", GATEWAY)
    block(done.stdout + done.stderr)
    expect(done.returncode == 0, f"why exited {done.returncode} with 9091 free, not 0")
    st.systemctl("restart", GATEWAY)
    state = st.expect_state(GATEWAY, "active")
    return (f"why named {PUSHGATEWAY} (foreign) on 9091 and `{command}`; once it was run, "
            f"why said the port is free (exit 0), and {GATEWAY} is {state}")
