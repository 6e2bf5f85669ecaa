"""observe.containers: which container holds a port.

`lookup` reads what runtimes record (podman, docker, libcni), `records` parses those files
(pure), `hints` is the fast path's one check: may any runtime publish a port here.
"""
