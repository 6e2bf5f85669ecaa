"""What a parser cannot know about portguard, for its man page and docs/commands.md.

scripts/gen-docs renders these (roff) next to what `portguard.cli.build_parser()` and
`portguard.errors.ExitStatus` say. EXIT_MEANINGS must name exactly ExitStatus's members:
gen-docs stops otherwise, so a new exit code is documented before it ships.
"""

NAME = "keep systemd services from failing with EADDRINUSE"

DESCRIPTION = r"""
.PP
A YAML file declares the ports each service needs.
Before the service starts (as its \fBExecStartPre=\fR, see \fBinstall\fR below),
or all the time (as \fBportguard daemon\fR), portguard looks at every declared port,
finds who holds it (process, user, systemd unit, container),
tells a duplicate of the same service from a different program,
and then, by the service's policy, stops the duplicate, waits it out,
or refuses with a diagnosis a person can act on.
Every decision is a journal record with \fBSYSLOG_IDENTIFIER=portguard\fR.
.PP
A holder is one of: \fIself\fR (a remnant of the unit's previous run, in its own cgroup),
\fItwin\fR (another instance of the same template, or a configured duplicate unit),
\fIstray\fR (the unit's program started outside any service),
\fIforeign\fR (anything else: never signalled, only named),
or \fIlingering\fR (TIME_WAIT and similar sockets with no listener).
The policies \fBstop\fR, \fBwait\fR, \fBfail\fR and \fBwarn\fR apply to the first three;
foreign holders follow \fBon_foreign\fR (\fBfail\fR or \fBwait\fR).
PID 1, portguard itself and \fBprotected\fR units are never touched.
.PP
Every command takes \fB\-h\fR, \fB\-\-help\fR to print its usage.
The global options go before the command:
\fBportguard \-\-json who 8080\fR.
"""

# What each exit code means: the codes themselves come from ExitStatus, and a member
# missing here (or a name here that is no member) stops this script.
EXIT_MEANINGS = {
    "OK": "Success: every port is clear (\\fBwho\\fR: every port is free; "
          "\\fBcheck\\-config\\fR: the config is valid).",
    "BLOCKED": "Blocked: a foreign holder, policy \\fBfail\\fR, a stop that failed, "
               "a unit that does not exist (\\fBwho\\fR, \\fBstatus\\fR: a port is held).",
    "USAGE": "Usage error: a bad command line, or \\fBinstall\\fR of a unit that is "
             "not a service.",
    "TIMEOUT": "Timed out waiting for a port or a lock (EX_TEMPFAIL).",
    "NOT_PERMITTED": "Not permitted: the command needs root, or polkit refused "
                     "(EX_NOPERM).",
    "BAD_CONFIG": "Bad config: missing, unreadable as YAML, invalid, or writable by "
                  "others (EX_CONFIG). \\fBportguard.service\\fR is not restarted on it.",
}

ENVIRONMENT = r"""
.TP
.B PORTGUARD_CONFIG
The config file to read when \fB\-\-config\fR is not given; unset or empty means
\fI/etc/portguard/config.yaml\fR.
A unit's environment does not have it: \fBinstall\fR writes a non\-default config
into the drop\-in's command line instead.
"""

FILES = r"""
.TP
.I /etc/portguard/config.yaml
The default config: the services, their ports and policies.
\fBportguard check\-config\fR validates it.
When portguard runs as root, the file and every directory above it must be owned by
root and not writable by group or others.
.TP
.I /run/portguard/
Lock files, one per port (\fIPROTO\-PORT.lock\fR), that serialise every guard acting
on the same port; root only (mode 0700).
.TP
.I /etc/systemd/system/UNIT.d/portguard.conf
The drop\-in written by \fBportguard install \fIUNIT\fR and removed by
\fBuninstall\fR: \fBExecStartPre=+/usr/bin/portguard preflight %n\fR.
A template's drop\-in (\fIweb@.service.d\fR) covers every instance.
.TP
.I /usr/lib/systemd/system/portguard.service
The unit that runs \fBportguard daemon\fR (\fBType=notify\fR);
\fBsystemctl reload portguard\fR re\-reads the config.
"""

EXAMPLES = r"""
.PP
Check the config, then see who holds two ports:
.PP
.nf
.RS 4
portguard check\-config
portguard who 8080 5353/udp
.RE
.fi
.PP
Guard every instance of a template unit before it starts, and see what a
preflight would do without doing it:
.PP
.nf
.RS 4
portguard install web@.service
systemctl cat web@blue.service
portguard preflight \-\-dry\-run web@blue.service
.RE
.fi
.PP
Run the daemon, and read every decision portguard made:
.PP
.nf
.RS 4
systemctl enable \-\-now portguard.service
journalctl SYSLOG_IDENTIFIER=portguard \-o verbose
.RE
.fi
"""

SEE_ALSO = r"""
.BR systemd.service (5),
.BR systemd.unit (5),
.BR systemctl (1),
.BR journalctl (1),
.BR ss (8),
.BR fuser (1)
"""
