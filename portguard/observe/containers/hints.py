"""Where container runtimes record published ports, and whether a host may have any.

Kept apart from `containers` so that the answer for most hosts (no container has
published anything: one stat, two failed listdirs) costs preflight's fast path and a
`who` on a free port no import beyond `os`.
"""

from __future__ import annotations

import os

CNI_RESULTS = "/var/lib/cni/results"  # libcni's result cache (podman with CNI, nerdctl)
DOCKER_ROOT = "/var/lib/docker"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"  # may move DOCKER_ROOT ("data-root")


def may_publish() -> bool:
    """Whether libcni or dockerd may have published a container's port (no: most hosts)."""
    if os.path.exists(DOCKER_DAEMON_JSON):
        return True
    for path in (CNI_RESULTS, f"{DOCKER_ROOT}/containers"):
        try:
            if os.listdir(path):
                return True
        except OSError:
            continue
    return False
