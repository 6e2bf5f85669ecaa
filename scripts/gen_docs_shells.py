"""Shell functions the completions call to offer unit names (scripts/gen-docs hands
them to shtab as the completers of `preflight UNIT`, `install UNIT`, `uninstall UNIT`).
tests/unit/docs_harness.py drives them against a fake systemctl.
"""

# Unit names for `preflight UNIT` and `install UNIT`: unit files (templates included,
# e.g. web@.service) and loaded units (instances, e.g. web@blue.service). `uninstall
# UNIT`: the units that have portguard's drop-in.
BASH_UNITS = r"""
# $1: the word being completed; prints the matches, one per line
_portguard_units() {
  local unit rest
  { systemctl list-unit-files --type=service --no-legend --no-pager --plain
    systemctl list-units --type=service --all --no-legend --no-pager --plain
  } 2>/dev/null | while read -r unit rest; do
    [[ $unit == "$1"* ]] && printf '%s\n' "$unit"
  done | sort -u
}

# $1: the word being completed; prints the matches, one per line
_portguard_installed_units() {
  local dropin unit
  for dropin in /etc/systemd/system/*.d/portguard.conf; do
    [ -e "$dropin" ] || continue
    unit=${dropin%.d/portguard.conf}
    unit=${unit##*/}
    [[ $unit == "$1"* ]] && printf '%s\n' "$unit"
  done
}
"""

ZSH_UNITS = r"""
_portguard_units() {
  local -a units expl
  units=(${(u)${${(f)"$(systemctl list-unit-files --type=service --no-legend --no-pager \
      --plain 2>/dev/null; systemctl list-units --type=service --all --no-legend \
      --no-pager --plain 2>/dev/null)"}%% *}})
  _wanted units expl 'service unit' compadd -a units
}

_portguard_installed_units() {
  local -a units expl
  units=(/etc/systemd/system/*.d/portguard.conf(N:h:t:r))
  _wanted units expl 'guarded unit' compadd -a units
}
"""

UNITS = {"bash": "_portguard_units", "zsh": "_portguard_units",
         "preamble": {"bash": BASH_UNITS, "zsh": ZSH_UNITS}}
INSTALLED_UNITS = {"bash": "_portguard_installed_units", "zsh": "_portguard_installed_units",
                   "preamble": {"bash": BASH_UNITS, "zsh": ZSH_UNITS}}
