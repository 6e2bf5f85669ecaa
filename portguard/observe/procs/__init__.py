"""observe.procs: processes and their cgroups.

`processes` is the only reader of /proc/PID and the only psutil user; `programs` says
which program a process (or a unit's ExecStart=) runs, by file identity; `cgroups` reads
what a cgroup path says (pure); `cgroupfs` reads the cgroup v2 filesystem.
"""
