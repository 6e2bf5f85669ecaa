"""processes.own_usage (the daemon's metrics about itself), checked against /proc/self
read independently here."""

from __future__ import annotations

import os
import time

from portguard.observe.procs import processes


def _btime() -> float:
    with open("/proc/stat") as f:
        return next(float(line.split()[1]) for line in f if line.startswith("btime "))


def test_own_usage_matches_proc_self() -> None:
    usage = processes.own_usage()
    assert usage is not None
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * page
    assert abs(usage.rss_bytes - rss) <= max(rss // 10, 4 * page)
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15
    assert cpu - 0.1 <= usage.cpu_seconds <= cpu + 0.1
    started = _btime() + int(fields[19]) / ticks  # starttime: field 22
    assert abs(usage.started_at - started) < 1.5
    assert usage.started_at <= time.time()


def test_open_fds_counts_what_this_process_opens() -> None:
    before = processes.own_usage()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(5)]
    try:
        after = processes.own_usage()
    finally:
        for fd in fds:
            os.close(fd)
    assert before is not None and after is not None
    assert after.open_fds - before.open_fds == 5
    # both counts include the directory fd open while /proc/self/fd is listed
    assert abs(len(os.listdir("/proc/self/fd")) - before.open_fds) <= 1
