"""`portguard discover` in the systemd sandbox: what it proposes from real listeners, that
check-config accepts it, that preflight with it guards them, and how --write behaves."""

from __future__ import annotations

import json

from support.cases import Case
from support.sandbox import listener_exec


def test_discover_proposes_a_config_that_check_config_accepts_and_preflight_uses(
        case: Case) -> None:
    sb, uid = case.sb, case.uid
    web_port, api_port, dns_port, act_port, stray_port = (case.port() for _ in range(5))
    web, api, dns = f"dweb-{uid}@.service", f"dapi-{uid}.service", f"ddns-{uid}.service"
    sb.write_unit(web, f"[Service]\nExecStart={listener_exec('--port', str(web_port))}\n",
                  reload=False)
    sb.write_unit(api, "[Service]\nExecStart="
                  f"{listener_exec('--port', str(api_port), '--addr', '::', '--workers', '2')}\n",
                  reload=False)
    sb.write_unit(dns, "[Service]\nExecStart="
                  f"{listener_exec('--udp', '--port', str(dns_port), '--addr', '127.0.0.1')}\n",
                  reload=False)
    # a socket unit that activates a service of another name (Service=): D-Bus says which
    sb.write_unit(f"dact-{uid}.socket", f"[Socket]\nListenStream={act_port}\n"
                  f"Service=dsrv-{uid}.service\n", reload=False)
    sb.write_unit(f"dsrv-{uid}.service", "[Service]\nExecStart=/bin/true\n")
    blue = web.replace("@", "@blue")
    case.units += [blue, api, dns, f"dact-{uid}.socket"]
    sb.systemctl("start", blue, api, dns, f"dact-{uid}.socket", check=True)
    stray = case.spawn(stray_port)
    sb.wait_listening(web_port)
    sb.wait_listening(api_port, count=3)
    sb.wait_listening(dns_port, "udp")

    done = sb.portguard("discover")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"  {web}:\n    ports: [\"0.0.0.0:{web_port}/tcp\"]" in text
    assert f"  {api}:\n    ports: [\"[::]:{api_port}/tcp\"]" in text
    assert f"  {dns}:\n    ports: [\"127.0.0.1:{dns_port}/udp\"]" in text
    api_master = case.main_pid(api)
    assert f"# {api}: pid {api_master} " in text  # the master, not its workers
    # PID 1's listener is its socket unit's; a process outside units is only a comment
    assert f"#   dsrv-{uid}.service: socket-activated: PID 1 holds [::]:{act_port} for " \
           f"dact-{uid}.socket" in text
    assert f"#   pid {stray} " in text and "outside any unit" in text
    assert f"dsrv-{uid}.service:\n" not in text.replace(f"#   dsrv-{uid}.service", "")

    written = f"/etc/portguard/discover-{uid}.yaml"
    done = sb.portguard("discover", "--write", written)
    assert done.returncode == 0, done.stderr
    assert sb.run(["stat", "-c", "%a", written]).stdout.strip() == "644"
    checked = sb.portguard("--config", written, "check-config")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # a second run refuses and leaves the file as it was
    before = sb.read_file(written)
    again = sb.portguard("discover", "--write", written)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert sb.read_file(written) == before

    # preflight with the proposal guards the template: green's start stops its twin blue
    green = web.replace("@", "@green")
    case.units.append(green)
    pre = sb.portguard("--config", written, "preflight", green, timeout=30)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert case.state(blue) == "inactive"
    assert sb.listening_pids(web_port) == set()


def test_discover_json_and_a_broken_config_beside_it(case: Case) -> None:
    case.write_config("services: [\n")
    done = case.sb.portguard("--config", case.cfg, "--json", "discover")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["config"].startswith("# portguard config proposed")
    assert any("unusable" in n for n in doc["notes"])
