"""Test support, one package on pytest's path (pyproject: pythonpath = ["tests"]).

The real-systemd sandbox (`sandbox`, with `sandbox_base`, `sandbox_host`,
`sandbox_inside`, `sandbox_run`), whether it can run here (`availability`), preflight and
daemon scenes (`cases`), preflight's scene and Python's import log (`preflight_scene`),
the listener program tests run under other names (`listener`), probes run inside the
sandbox (`unit_probe`), the isolated Debian root (`debroot`), the bind() oracle and its
socket zoo (`bind_oracle`, `bind_zoo`), the soak (`soak/`), and the field harness for
real Debian daemons (`daemons`, `guard`, `runtimes`). Tests, bench/ and the demo import
them as `support.NAME`.
"""
