"""The soak's world inside the sandbox: paths, the journal's ids, kinds, unit templates.

The journal's ids and the kinds are the contract as the contract (docs/) and the README state it,
spelled out rather than imported from portguard, so that the oracle stays independent of
the code it checks.
"""

from __future__ import annotations

PY3 = "/usr/bin/python3"
HOLDER = "/run/soak/holder.py"
EXEC = (PY3, "-I", "-S", HOLDER)  # the services' ExecStart=: a stray runs exactly this
# The same code in other files: other programs (DESIGN case 3 judges the script file, not
# the arguments); CMDCOPY is a stray only when duplicates.commands names it.
OTHER = "/run/soak/other.py"
CMDCOPY = "/run/soak/cmdcopy.py"
SIGDIR = "/run/soak/sig"  # SIGDIR/s<N>/<tag>.<pid>.log, <tag>.ready
ENVDIR = "/run/soak/env"  # one EnvironmentFile per unit, by full unit name
CFGDIR = "/etc/portguard/soak"
FIRST_PORT, PORT_SPAN = 10000, 22000  # scenario n: FIRST_PORT + 2 * (n % (PORT_SPAN // 2))
NOBODY = 65534
DEFAULT_SEED = 20261120

# MESSAGE_IDs: the contract (README "Journal"), spelled out rather than imported.
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
STOP_UNIT = "32df9301fc754f1285c3344dda6a731d"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
KILL = "744a196b2567446ba506391298360d15"
WAIT_ID = "da25c984d0a14814a1be47f9d2384f7a"

# Kinds (DESIGN "Kinds and policies") and what the oracle says portguard does with each.
SELF, TWIN, STRAY, FOREIGN, LINGERING = "self", "twin", "stray", "foreign", "lingering"
ACT, WAIT, REFUSE, TOLERATE, NONE = "act", "wait", "refuse", "tolerate", "none"
KINDS = (SELF, TWIN, STRAY, FOREIGN, LINGERING)  # in the report's order
ACTIONS = (ACT, WAIT, REFUSE, TOLERATE, NONE)
MADE = ("foreign", "twin", "stray", "remnant", "lingering", "protected")
MADE_WEIGHTS = (22, 22, 22, 10, 12, 12)
PROFILES = ("", "learned", "replaced")  # Scenario.profile
PROFILE_WEIGHTS = (45, 40, 15)
PROFILE_DIR = "/var/lib/portguard/profiles"  # docs/identity.md, "Profiles"
POLICIES = ("stop", "wait", "fail", "warn")
POLICY_WEIGHTS = (40, 20, 20, 20)

SERVICE_UNIT = """\
[Unit]
Description=portguard soak service (lane {lane}) %i

[Service]
EnvironmentFile={envdir}/%n
Environment=PYTHONPATH={repo}
ExecStartPre=+/bin/sh -c '[ "$$SOAK_GUARD" = 1 ] || exit 0; exec {python} -m portguard \
--config "$$SOAK_CONFIG" preflight "$$1"' sh %n
ExecStart={exec}
KillMode=process
TimeoutStopSec=60
{user}"""

# Not an instance of the service's template: a foreign unit, or (when the config lists
# it in duplicates.units) a configured duplicate. $SOAK_ARGS: empty (the service's exact
# argv) or "foreign" (another program).
OTHER_UNIT = """\
[Unit]
Description=portguard soak other unit (lane {lane}) %i

[Service]
EnvironmentFile={envdir}/%n
ExecStart={exec} $SOAK_ARGS
TimeoutStopSec=60
"""
