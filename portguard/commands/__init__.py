"""commands: one module per command, each running the data path for its job.

config -> observe -> decide -> act -> report, wired by `portguard.app.App`, which every
command receives. `preflight` (with `preflight_execute`), `who`, `status`,
`check_config`, `install`, `daemon` (with `daemon_survey`, what one pass sees, and
`daemon_heal`, what it fixes). Imported only by `portguard.cli`; imports anything below.
"""

# The global options' values when not given: `cli.build_parser` sets these, and `who`'s
# fast way (who_fast.arguments) builds its arguments from them without argparse.
OPTION_DEFAULTS = {"config": None, "json": False, "quiet": False, "verbose": 0}
