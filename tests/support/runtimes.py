"""Container runtimes in a field sandbox: what test_podman.py and test_docker.py share.

    require(sb, "podman", "conmon", "runc")  # skip, or fail under CI=true, when missing
    PODMAN_PLATFORMS["debian12-cni"] -> ("bookworm", "cni")   # root x network backend
    podman_conf(sb, "netavark")              # containers.conf as an administrator sets it
    private_store(sb, "/var/lib/containers") # a tmpfs over it inside: nothing outlives it
    rootfs_tar(sb) -> "/tmp/web.tar"         # busybox-static + httpd/sh links, /www/index.html
    scope_procs(sb, "/machine.slice/libpod-ID.scope") -> {pid: start time}
    who_json(sb, 8080) -> (table text, the port's JSON document)
    with declaring(field, uid) as guard: ...  # app-UID.service declares 8080, guarded
    assert_refused(guard, "podman stop web")  # preflight exit 1, advice, journal, no signal

The image's CMD is `httpd -f -p 8080 -h /www` (busybox), serving "hello".
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from support.availability import skip_or_fail
from support.daemons import Field
from support.guard import CONFLICT, REFUSED, Guard
from support.sandbox import Sandbox, listener_exec

PORT = 8080
PAGE = "hello\n"
CMD = f'CMD ["/bin/httpd","-f","-p","{PORT}","-h","/www"]'


# Where users run podman: Debian 12's podman 4.3 with either network backend (CNI, or
# netavark, its default where recommends are installed), Debian 13's podman 5 (netavark
# only). In the roots of support/roots.py.
PODMAN_PLATFORMS = {"debian12-cni": ("bookworm", "cni"),
                    "debian12-netavark": ("bookworm", "netavark"),
                    "debian13-netavark": ("trixie", "netavark")}


def podman_conf(sb: Sandbox, backend: str) -> None:
    """containers.conf for the tests: the network backend; runc (crun refuses a hybrid
    cgroup host); no pids limit (this host's cgroup v2 has no pids controller, and runc
    fails writing pids.max)."""
    sb.run(["/bin/sh", "-c", 'mkdir -p /etc/containers/containers.conf.d && cat >"$1"',
            "conf", "/etc/containers/containers.conf.d/50-portguard-test.conf"],
           input=f'[containers]\npids_limit = 0\n[engine]\nruntime = "runc"\n'
                 f'[network]\nnetwork_backend = "{backend}"\n', check=True)
    found = sb.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"], timeout=60)
    assert found.stdout.strip() == backend, found.stdout + found.stderr


def require(sb: Sandbox, *tools: str) -> None:
    """Skip (under CI=true, fail) when a runtime's tools or busybox-static are missing
    from the sandbox's Debian (absolute paths, or names in /usr/bin and /usr/sbin)."""
    def there(tool: str) -> bool:
        paths = [tool] if tool.startswith("/") else [f"/usr/{d}/{tool}" for d in ("bin", "sbin")]
        return any(os.path.lexists(sb.image_path(p)) for p in paths)

    missing = [t for t in (*tools, "/bin/busybox") if not there(t)]
    if missing:
        skip_or_fail(f"not installed: {' '.join(missing)} (tests/support/root-packages)")


def private_store(sb: Sandbox, *dirs: str) -> None:
    """A tmpfs over each directory inside the sandbox (an empty mount point on the host)."""
    for d in dirs:
        sb.run(["/bin/sh", "-c", f"mkdir -p {d} && mount -t tmpfs -o mode=711 rt-store {d}"],
               check=True)


def rootfs_tar(sb: Sandbox) -> str:
    sb.run(["/bin/sh", "-c", "set -e; r=/tmp/web-rootfs; mkdir -p $r/bin $r/www; "
            "cp /bin/busybox $r/bin/; for l in sh httpd sleep; do ln -sf busybox $r/bin/$l; "
            f"done; printf '{PAGE}' > $r/www/index.html; tar -C $r -cf /tmp/web.tar ."],
           check=True)
    return "/tmp/web.tar"


def scope_procs(sb: Sandbox, cgroup: str) -> dict[int, str]:
    """pid -> start time of every process in a container's cgroup (must not change)."""
    text = sb.run(["cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs"], check=True).stdout
    assert text.split(), f"no process in {cgroup}"
    return {int(p): sb.read_file(f"/proc/{p}/stat").split()[21] for p in text.split()}


def who_json(sb: Sandbox, port: int = PORT) -> tuple[str, dict[str, Any]]:
    """`who PORT` as the table and as the port's JSON document; both must say "held"."""
    text = sb.portguard("who", str(port))
    assert text.returncode == 1, text.stdout + text.stderr
    doc = sb.portguard("--json", "who", str(port))
    assert doc.returncode == 1, doc.stderr
    [found] = json.loads(doc.stdout)["ports"]
    return text.stdout, found


def note(via: str | None, runtime: str, cid: str, image: str, name: str = "web") -> str:
    """The line `who` adds under a container's holder."""
    by = f"{via} for " if via else ""
    return (f"note: {PORT}/tcp: held by {by}{runtime} container {name} ({cid[:12]}, image "
            f"{image}): `{runtime} stop {name}` frees it")


@contextlib.contextmanager
def declaring(field: Field, uid: str) -> Iterator[Guard]:
    """A service that declares 8080, with portguard installed as its ExecStartPre=."""
    unit = f"app-{uid}.service"
    field.sb.write_unit(unit, f"[Service]\nExecStart={listener_exec('--port', str(PORT))}\n")
    g = Guard(field.sb, f"{unit}:\n  ports: ['{PORT}']\n  policy: stop")
    g.install(unit)
    try:
        yield g
    finally:
        field.stop(unit)
        g.uninstall()


def assert_refused(guard: Guard, stop: str, name: str = "web") -> None:
    """preflight refuses (exit 1) with the runtime's command; the journal names the
    container; portguard signalled nothing."""
    unit = guard.installed[0]
    out = guard.run("preflight", unit)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"container {name}" in out.stderr and stop in out.stderr, out.stderr
    [refused] = guard.records(REFUSED, unit=unit)
    assert refused["PORTGUARD_HOLDER_CONTAINER"] == name
    assert refused["PORTGUARD_HOLDER_KIND"] == "foreign"
    assert stop in refused["MESSAGE"]
    decisions = guard.records(CONFLICT, unit=unit)
    assert decisions and all(r["PORTGUARD_HOLDER_CONTAINER"] == name for r in decisions)
    assert guard.signalled() == set()
