"""commands: one module per command, each running the data path for its job.

config -> observe -> decide -> act -> report, wired by `portguard.app.App`, which every
command receives. `preflight` (with `preflight_execute`), `who`, `status`,
`check_config`, `install`, `daemon` (with `daemon_survey`, what one pass sees, and
`daemon_heal`, what it fixes). Imported only by `portguard.cli`; imports anything below.
"""
