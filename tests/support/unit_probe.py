"""The program test_unit_file.py runs as portguard.service's main process, in place of the
daemon: under every setting of the shipped unit it does each thing the daemon does that a
setting could refuse, and checks that what the unit forbids is refused. It writes a JSON
report (one entry per step) to argv[1], then says READY=1 and waits to be stopped.
Configured through PROBE_* environment variables (see test_unit_file.run_probe)."""

# every step reports instead of raising
PROBE = r'''
import json, os, signal, sys, time
from pathlib import Path

out = {}

def step(name, fn):
    try:
        out[name] = fn()
    except BaseException as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}", "errno": getattr(exc, "errno", None)}

def status():
    keep = ("Uid", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: fields[k].split()[1 if k == "Uid" else 0] for k in keep}

def imports():
    import lxml.etree, pystemd.dbuslib, sdnotify  # C extensions under MemoryDenyWriteExecute=
    return "ok"

def sockdiag():
    from portguard.observe.kernel import sockets
    found = sockets.query(range(1, 65536), via="netlink")
    return sorted({f"{s.local_port}/{s.proto} uid={s.uid} cgroup={s.cgroup_id is not None}"
                   for s in found if s.state in ("LISTEN", "UNCONN")})

def who():
    from portguard.app import App
    from portguard.model import Proto
    app = App()
    specs = (x.split("/") for x in os.environ["PROBE_PORTS"].split())
    wanted = [(int(p), Proto(q)) for p, q in specs]
    try:
        return {f"{r.port}/{r.proto}": [
            {"pids": [p.pid for p in h.processes], "users": [p.user for p in h.processes],
             "exe": [p.exe for p in h.processes], "unit": h.unit.id if h.unit else None,
             "unknown": h.unknown_reason} for h in r.holders]
            for r in app.observer.ports(wanted)}
    finally:
        app.close()

def bind():
    from portguard.model import BindIntent
    from portguard.observe.kernel.probe import probe_bind
    from portguard.model import Proto
    res = {}
    for spec in os.environ["PROBE_BIND"].split():
        port, proto = spec.split("/")
        err = probe_bind(BindIntent(None, int(port), Proto(proto)))
        res[spec] = 0 if err is None else err.errno
    return res

def read_fds():
    pid = int(os.environ["PROBE_STRAY"])
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "exe": os.readlink(f"/proc/{pid}/exe")}

def dbus():
    from portguard.act.units import UnitControl
    from portguard.observe.systemd.units import Systemd
    sd = Systemd.connect()
    ctl = UnitControl(sd)
    unit = os.environ["PROBE_VICTIM"]
    try:
        stop = ctl.stop(unit, timeout=10)
        stopped = sd.active_state(unit)
        start = ctl.start(unit, timeout=10)
        return [stop.result, stopped, start.result, sd.active_state(unit)]
    finally:
        sd.close()

def lock():
    from portguard.act.lock import port_locks
    from portguard.model import Proto
    with port_locks([(int(os.environ["PROBE_LOCK_PORT"]), Proto.TCP)], timeout=2):
        return oct(os.stat("/run/portguard").st_mode & 0o7777)

def metrics():
    from portguard.report.metrics import Snapshot, write_atomic
    path = Path(os.environ["PROBE_METRICS"])
    write_atomic(path, Snapshot((), {}, {}, {}, 0.0, time.time(), 0))
    return oct(path.stat().st_mode & 0o777)

def journal():
    from portguard.report.journal import Event, Journal
    j = Journal(echo=False)
    j.emit(Event.PORTS_CLEAR, "portguard unit probe", extra={"probe": os.environ["PROBE_ID"]})
    return j.sender._sock is not None  # delivered over the journal socket

def forbidden():
    import socket
    res = {}
    for name, fn in (
            ("write_usr", lambda: Path("/usr/portguard-probe").write_text("x")),
            ("write_etc", lambda: Path("/etc/portguard-probe").write_text("x")),
            ("sched_setaffinity", lambda: os.sched_setaffinity(0, {0})),
            ("setuid", lambda: os.setuid(65534)),
            ("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
            ("mknod", lambda: os.mknod("/run/portguard/node", 0o020600, os.makedev(1, 3)))):
        try:
            fn()
            res[name] = "allowed"
        except OSError as exc:
            res[name] = exc.errno
    return res

def pidfd_signal():
    fd = os.pidfd_open(int(os.environ["PROBE_STRAY"]))
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
    finally:
        os.close(fd)
    return "sent"

for name, fn in (("status", status), ("imports", imports), ("sockdiag", sockdiag),
                 ("who", who), ("bind", bind), ("read_fds", read_fds), ("dbus", dbus),
                 ("lock", lock), ("metrics", metrics), ("journal", journal),
                 ("forbidden", forbidden), ("signal", pidfd_signal)):
    step(name, fn)
Path(sys.argv[1]).write_text(json.dumps(out))
import sdnotify
sdnotify.SystemdNotifier().notify("READY=1")
signal.pause()  # until `systemctl stop`: READY=1 must be read while we still run
'''
