"""Where container runtimes record published ports, and whether a host may have any.

Kept apart from `containers` so that the answer for most hosts (no container has
published anything: two stats, three failed listdirs) costs preflight's fast path and a
`who` on a free port no import beyond `os`.
"""

from __future__ import annotations

import os

CNI_RESULTS = "/var/lib/cni/results"  # libcni's result cache (podman with CNI, nerdctl)
DOCKER_ROOT = "/var/lib/docker"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"  # may move DOCKER_ROOT ("data-root")


# netavark (podman's other backend): its records of published ports (netavark >= 1.10),
# else podman's IPAM database for it, there since its first network setup this boot
NETAVARK_PORTS = "/run/containers/networks/firewall/ports"
NETAVARK_IPAM = "/run/containers/networks/ipam.db"


def may_publish() -> bool:
    """Whether libcni, netavark or dockerd may have published a container's port (no: most
    hosts)."""
    if os.path.exists(DOCKER_DAEMON_JSON):
        return True
    if not os.path.isdir(NETAVARK_PORTS) and os.path.exists(NETAVARK_IPAM):
        return True  # a netavark without records: only its NAT rules tell
    for path in (CNI_RESULTS, NETAVARK_PORTS, f"{DOCKER_ROOT}/containers"):
        try:
            if os.listdir(path):
                return True
        except OSError:
            continue
    return False
