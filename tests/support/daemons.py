"""Real Debian daemons under their packaged unit files, inside a systemd sandbox.

The one place that says which daemons the field suite runs and what each needs
(`DAEMONS`); scripts/bootstrap (FIELD_PACKAGES) installs them, with a policy-rc.d guard so
nothing starts on the host. `Field(sb)` sets a daemon up inside a Sandbox
(tests/support/sandbox.py) the way a booted Debian host has it:

    field = Field(sb)
    field.install("nginx")                      # packaged units copied unchanged, dirs made
    field.config("/etc/nginx/sites-enabled", {"default": "server { listen 8080; }"})
    field.start("nginx.service"); field.holders(8080) -> {pid: "nginx"}
    field.unit_pids("nginx.service"); field.status("nginx.service"); field.journal(...)

What it writes and where (nothing lands on the host):
- unit files: /etc/systemd/system inside (a private tmpfs), byte for byte the packaged
  /lib/systemd/system files;
- the directories a boot's tmpfiles or the package's postinst would have made on the empty
  private tmpfs (/run, /var/log, /var/cache), with the owner and mode the host's copy has
  (or the package's tmpfiles.d entry says);
- the host directories the daemon writes (its /var/lib state, say) get a tmpfs over them
  inside, holding a copy of the host's contents: the daemon's writes stay in the sandbox;
- config(): a tmpfs over a config directory inside, holding the host's files plus the
  test's, so a test changes a listen port without touching /etc on the host.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from support.sandbox import Sandbox

UNIT_DIR = "/lib/systemd/system"
TMPFILES_DIR = "/usr/lib/tmpfiles.d"


class Daemon(NamedTuple):
    package: str  # the Debian package that ships it (scripts/bootstrap installs it)
    units: tuple[str, ...]  # packaged unit files to copy, unchanged
    exe: str  # its executable, as the unit's ExecStart= names it
    made_dirs: tuple[str, ...] = ()  # on the sandbox's empty tmpfs: made like the host's
    tmpfiles: tuple[str, ...] = ()  # tmpfiles.d entries a boot would apply
    private_dirs: tuple[str, ...] = ()  # host dirs it writes: a tmpfs over them inside
    dev_log: bool = False  # its unit needs /dev/log (BindReadOnlyPaths=/dev/log:...)
    # Names that carry the Debian release's version (php8.2 in 12, php8.4 in 13): "{v}"
    # in the fields above is the one entry of this directory (resolve()); tmpfiles
    # entries may be globs (lighttpd.tmpfile.conf in 12, lighttpd.conf in 13).
    version_dir: str = ""
    version: str = ""  # filled by resolve()


DAEMONS: dict[str, Daemon] = {
    "nginx": Daemon("nginx", ("nginx.service",), "/usr/sbin/nginx",
                    made_dirs=("/var/log/nginx",), private_dirs=("/var/lib/nginx",)),
    "redis": Daemon("redis-server", ("redis-server.service", "redis-server@.service"),
                    "/usr/bin/redis-server",
                    made_dirs=("/var/log/redis",),
                    private_dirs=("/var/lib/redis", "/etc/redis")),
    "php-fpm": Daemon("php{v}-fpm", ("php{v}-fpm.service",), "/usr/sbin/php-fpm{v}",
                      tmpfiles=("php{v}-fpm.conf",), version_dir="/etc/php"),
    # BindReadOnlyPaths=/dev/log:/var/lib/haproxy/dev/log (its chroot): 226/NAMESPACE
    # where /dev/log is missing
    "haproxy": Daemon("haproxy", ("haproxy.service",), "/usr/sbin/haproxy",
                      tmpfiles=("haproxy.conf",), private_dirs=("/var/lib/haproxy",),
                      dev_log=True),
    # postgresql@15-main.service (%i = VERSION-CLUSTER) runs pg_ctlcluster, a perl wrapper
    # that starts postgres as user postgres; clusters are made inside by pg_createcluster
    "postgresql": Daemon("postgresql", ("postgresql.service", "postgresql@.service"),
                         "/usr/bin/pg_ctlcluster", tmpfiles=("postgresql-common.conf",),
                         private_dirs=("/var/lib/postgresql", "/etc/postgresql"),
                         version_dir="/usr/lib/postgresql"),
    "lighttpd": Daemon("lighttpd", ("lighttpd.service",), "/usr/sbin/lighttpd",
                       tmpfiles=("lighttpd*.conf",)),
    "memcached": Daemon("memcached", ("memcached.service",), "/usr/bin/memcached",
                        tmpfiles=("memcached.conf",)),
    # Wrapped or self-dropping daemons, judged by their learned profiles
    # (docs/identity.md, "Profiles"): apachectl (sh) starts apache2, root with www-data
    # workers; named -u bind drops to bind (no User=); the dnsmasq helper (sh) execs
    # dnsmasq, which drops to dnsmasq; unbound drops to unbound
    # apachectl makes its lock dir under /var/lock (/run/lock: systemd's legacy.conf)
    "apache2": Daemon("apache2", ("apache2.service",), "/usr/sbin/apachectl",
                      made_dirs=("/var/log/apache2",), tmpfiles=("legacy.conf",)),
    "named": Daemon("bind9", ("named.service",), "/usr/sbin/named",
                    tmpfiles=("named.conf",), made_dirs=("/var/cache/bind",),
                    dev_log=True),  # named logs through syslog(3)
    "dnsmasq": Daemon("dnsmasq", ("dnsmasq.service",), "/usr/share/dnsmasq/systemd-helper",
                      tmpfiles=("dnsmasq.conf",), private_dirs=("/var/lib/misc",)),
    "unbound": Daemon("unbound", ("unbound.service",), "/usr/sbin/unbound",
                      private_dirs=("/var/lib/unbound",)),
    # ssh.socket (Accept=no) makes PID 1 hold 22 until a connection starts ssh.service;
    # sshd logs through syslog(3), to /dev/log, as on a booted host
    "ssh": Daemon("openssh-server", ("ssh.socket", "ssh.service"), "/usr/sbin/sshd",
                  dev_log=True),
}


def resolve(name: str, root: str = "") -> Daemon:
    """DAEMONS[name] as installed in `root` ("" for the host's /): its version filled in
    and its tmpfiles globs matched."""
    spec = DAEMONS[name]
    if spec.version_dir:
        found = sorted(os.listdir(root + spec.version_dir)) \
            if os.path.isdir(root + spec.version_dir) else []
        version = found[-1] if found else "?"
        spec = Daemon(*(tuple(x.format(v=version) for x in f) if isinstance(f, tuple)
                        else f.format(v=version) if isinstance(f, str) else f
                        for f in spec))._replace(version=version)
    tmpfiles = tuple(m.name for pattern in spec.tmpfiles
                     for m in sorted(Path(root + TMPFILES_DIR).glob(pattern)))
    return spec._replace(tmpfiles=tmpfiles)


def missing_packages(names: list[str], root: str = "") -> list[str]:
    """The Debian packages of these daemons that are not installed in `root`."""
    out = []
    for name in names:
        spec = resolve(name, root)
        if not all(Path(root + UNIT_DIR, u).is_file() for u in spec.units) or \
                not os.path.lexists(root + spec.exe) or \
                len(spec.tmpfiles) < len(DAEMONS[name].tmpfiles):
            out.append(spec.package)
    return out


class Field:
    """Daemons set up inside one running sandbox; see the module docstring."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.installed: set[str] = set()
        self._mounted: set[str] = set()

    # -- setting up -----------------------------------------------------------------

    def install(self, name: str) -> Daemon:
        """Copy the daemon's packaged units in, make its directories; idempotent."""
        spec = self.daemon(name)
        if name in self.installed:
            return spec
        for d in spec.private_dirs:
            self._private(d, {})
        for d in spec.made_dirs:
            st = os.stat(self.sb.image_path(d))
            self.sb.run(["install", "-d", "-o", str(st.st_uid), "-g", str(st.st_gid),
                         "-m", oct(stat.S_IMODE(st.st_mode))[2:], d], check=True)
        for conf in spec.tmpfiles:
            self.sb.run(["systemd-tmpfiles", "--create", f"{TMPFILES_DIR}/{conf}"],
                        check=True)
        if spec.dev_log:
            self._dev_log()
        for unit in spec.units:
            self.sb.write_unit(unit, Path(self.sb.image_path(f"{UNIT_DIR}/{unit}")).read_text(),
                               reload=False)
        self.sb.systemctl("daemon-reload", check=True)
        self.installed.add(name)
        return spec

    def daemon(self, name: str) -> Daemon:
        """DAEMONS[name] as packaged in this sandbox's Debian (its version filled in)."""
        return resolve(name, self.sb.image_path("/").rstrip("/"))

    def config(self, directory: str, files: Mapping[str, str], *,
               remove: tuple[str, ...] = ()) -> None:
        """Put `files` (name -> text) into `directory` inside the sandbox, on a tmpfs that
        holds a copy of the host's directory (minus `remove`): the host's stays as it is."""
        self._private(directory, files, remove)

    def _private(self, directory: str, files: Mapping[str, str],
                 remove: tuple[str, ...] = ()) -> None:
        if directory not in self._mounted:
            st = os.stat(self.sb.image_path(directory))
            save = f"/run/portguard-field/save{directory}"
            script = (
                'set -e; d=$1; save=$2; mkdir -p "$save"; cp -a "$d/." "$save/"; '
                'mount -t tmpfs -o "mode=$3,uid=$4,gid=$5" field "$d"; cp -a "$save/." "$d/"')
            self.sb.run(["/bin/sh", "-c", script, "private", directory, save,
                         oct(stat.S_IMODE(st.st_mode))[2:], str(st.st_uid), str(st.st_gid)],
                        check=True)
            self._mounted.add(directory)
        for name in remove:
            self.sb.run(["rm", "-f", "--", f"{directory}/{name}"], check=True)
        for name, text in files.items():
            path = f"{directory}/{name}"
            self.sb.run(["/bin/sh", "-c", 'cat > "$1"', "write", path], input=text, check=True)

    def _dev_log(self) -> None:
        """/dev/log as a booted host has it: a symlink to journald's syslog socket (the
        sandbox's journald listens there). The sandbox's /dev is the host's devtmpfs, so
        the link goes on an overlay mounted over /dev inside (its submounts moved onto
        it): the host's /dev is never written."""
        if "/dev" in self._mounted:
            return
        script = (
            'set -e; w=/run/portguard-field/dev; mkdir -p "$w/upper" "$w/work" "$w/merged"; '
            'mount -t overlay field-dev -o "lowerdir=/dev,upperdir=$w/upper,workdir=$w/work" '
            '"$w/merged"; '
            'for m in $(findmnt -rn -o TARGET -R /dev | tail -n +2 | sort -u); do '
            'case $m in /dev/*/*) continue;; esac; mount --move "$m" "$w/merged${m#/dev}"; '
            'done; mount --move "$w/merged" /dev; '
            'ln -s /run/systemd/journal/dev-log /dev/log')
        self.sb.run(["/bin/sh", "-c", script], check=True)
        self._mounted.add("/dev")

    # -- running --------------------------------------------------------------------

    def start(self, unit: str, *, check: bool = True) -> Any:
        out = self.sb.systemctl("start", unit, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"systemctl start {unit} exited {out.returncode}: "
                                 f"{out.stderr}\n{self.status(unit)}")
        return out

    def stop(self, unit: str) -> None:
        self.sb.systemctl("stop", unit, timeout=60)

    def is_active(self, unit: str) -> str:
        return self.sb.systemctl("is-active", unit).stdout.strip()

    def status(self, unit: str) -> str:
        """`systemctl status UNIT` as an administrator reads it (all lines, no pager)."""
        out = self.sb.systemctl("status", "--full", "--lines=30", unit)
        return out.stdout + out.stderr

    def unit_pids(self, unit: str) -> set[int]:
        """Every process in the unit's cgroup (cgroup.procs of it and its children)."""
        cgroup = self.sb.unit_property(unit, "ControlGroup")
        if not cgroup:
            return set()
        out = self.sb.run(["/bin/sh", "-c", 'cat $(find "$1" -name cgroup.procs)', "procs",
                           f"/sys/fs/cgroup{cgroup}"])
        return {int(p) for p in out.stdout.split()}

    def holders(self, port: int, proto: str = "tcp") -> dict[int, str]:
        """`ss -Hl(t|u)np` on the port: pid -> the process name ss shows."""
        flag = {"tcp": "-Hltnp", "udp": "-Hlunp"}[proto]
        text = self.sb.run(["ss", flag, "sport", "=", f":{port}"], check=True).stdout
        return {int(pid): name for name, pid in re.findall(r'\("([^"]*)",pid=(\d+),', text)}

    def wait_holders(self, port: int, *, gone: set[int] | None = None,
                     timeout: float = 10.0) -> dict[int, str]:
        """The port's holders once there are some (and none of `gone` among them)."""
        found: dict[int, str] = {}

        def ready() -> bool:
            nonlocal found
            found = self.holders(port)
            return bool(found) and not (gone and gone & set(found))

        self.sb.wait_for(ready, timeout, f"a listener on {port}")
        return found

    def spawn_by_hand(self, command: str, *, user: str = "root") -> None:
        """Run a shell command line outside any unit, as an admin would from a root shell
        (daemons that fork into the background return at once)."""
        argv = ["/bin/sh", "-c", command]
        if user != "root":
            argv = ["runuser", "-u", user, "--", *argv]
        out = self.sb.run(["setsid", *argv], timeout=30)
        if out.returncode != 0:
            raise AssertionError(f"{command!r} by hand exited {out.returncode}: "
                                 f"{out.stdout}{out.stderr}")

    def wait_master(self, port: int, user: str = "root", workers: str = "www-data",
                    timeout: float = 10.0) -> tuple[int, set[int]]:
        """A prefork holder of the port once settled: one master running as `user`, every
        other holder its worker running as `workers` (they switch user after fork).
        Returns (master pid, master and all its descendants)."""
        master = 0

        def settled() -> bool:
            nonlocal master
            users = self.users(self.holders(port))
            masters = [p for p, u in users.items() if u == user]
            master = masters[0] if len(masters) == 1 else 0
            return bool(master) and len(users) > 1 and all(
                u == workers for p, u in users.items() if p != master)

        self.sb.wait_for(settled, timeout, f"a {user} master with {workers} workers on {port}")
        return master, self.tree(master)

    def tree(self, pid: int) -> set[int]:
        """pid and its descendants, inside."""
        out = {pid}
        for child in self.sb.run(["cat", f"/proc/{pid}/task/{pid}/children"]).stdout.split():
            out |= self.tree(int(child))
        return out

    def ps(self, pids: set[int] | dict[int, str]) -> str:
        """`ps` of those pids (user, title), for failure messages and user checks."""
        if not pids:
            return ""
        return self.sb.run(["ps", "-o", "pid=,ppid=,user=,args=", "-p",
                            ",".join(str(p) for p in pids)]).stdout

    def users(self, pids: set[int] | dict[int, str]) -> dict[int, str]:
        """pid -> user name, as ps shows it."""
        out = {}
        for line in self.ps(pids).splitlines():
            pid, _ppid, user, *_ = line.split()
            out[int(pid)] = user
        return out

    def journal(self, unit: str, since_cursor: str | None = None) -> list[dict[str, Any]]:
        return self.sb.journal("-u", unit, since_cursor=since_cursor)

    def shell(self, command: str) -> str:
        return self.sb.run(["/bin/sh", "-c", command]).stdout

