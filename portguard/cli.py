"""The command line: parses argv, runs one command, and is the only place that exits.

`main(argv)` returns the exit status instead of exiting, so tests run it in-process.
"""

from __future__ import annotations

import sys

from portguard import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any, TextIO

    from portguard.app import App
    from portguard.errors import ExitStatus
    from portguard.report.journal import Journal
    from portguard.report.output import Output

    Handler = Callable[[argparse.Namespace, App, Output], ExitStatus]


def _handler(name: str) -> Handler:
    """`module:function` in portguard.commands, imported only for the command that runs:
    `who` on a free port must not pay for YAML, D-Bus or dataclasses."""
    module, function = name.split(":")
    # __import__, not importlib.import_module: only the former shows in `-X importtime`.
    found: Handler = getattr(__import__(f"portguard.commands.{module}", fromlist=[function]),
                             function)
    return found


_PARSER_TYPE: type[argparse.ArgumentParser] | None = None


def _parser_type() -> type[argparse.ArgumentParser]:
    """argparse's parser, made to raise instead of exiting so main() stays the only exit
    point. Built on first use: a guarded start on free ports never parses (argparse and
    what it imports cost more than the rest of that start)."""
    global _PARSER_TYPE  # noqa: PLW0603 -- built once per process
    if _PARSER_TYPE is not None:
        return _PARSER_TYPE
    import argparse

    class Formatter(argparse.HelpFormatter):
        """argparse's formatter, sized without `shutil` (argparse imports it for every
        parse, ~3 ms, even when no help is printed)."""

        def __init__(self, prog: str, **kwargs: Any) -> None:
            import os
            try:
                columns = os.get_terminal_size(sys.stdout.fileno()).columns
            except (OSError, ValueError):
                columns = int(os.environ.get("COLUMNS", "80") or 80)
            kwargs.setdefault("width", max(40, columns - 2))
            super().__init__(prog, **kwargs)

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", Formatter)
            super().__init__(*args, **kwargs)

        def error(self, message: str) -> Any:  # argparse calls this on bad usage
            from portguard.errors import UsageError
            raise UsageError(f"{self.prog}: {message}\nTry '{self.prog} --help'.")

        def exit(self, status: int = 0, message: str | None = None) -> Any:
            if message:
                sys.stderr.write(message)
            raise _HelpExit(status)

    _PARSER_TYPE = Parser
    return Parser


class _HelpExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at import: see _parser_type

    from portguard.commands import OPTION_DEFAULTS
    from portguard.commands.who_fast import WHO_DEFAULTS
    parser_type = _parser_type()
    parser = parser_type(
        prog="portguard",
        description="Keep systemd services from failing with 'bind: Address already in use'.",
    )
    parser.add_argument("--version", action="version", version=f"portguard {__version__}")
    parser.add_argument(
        "--config", metavar="PATH",
        help="config file (default: $PORTGUARD_CONFIG, then /etc/portguard/config.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", help="say more")
    noise.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    parser.set_defaults(**OPTION_DEFAULTS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_type)
    commands.required = True

    check = commands.add_parser(
        "check-config", help="validate the config file, like nginx -t",
        description="Validate the config; print OK: PATH or every error as FILE:LINE: message.",
    )
    check.set_defaults(handler="check_config:run")

    who = commands.add_parser(
        "who", help="who holds these ports",
        description="Show who holds each port: address, state, pid, user, command line, "
        "unit. Exit 0 when every port is free, 1 when any is held. With an address or "
        "--[no-]reuse-address: whether a service could bind() it so now, and which "
        "holders stop it; exit 1 when any such bind() would fail.",
    )
    who.add_argument("ports", nargs="+", metavar="[ADDR:]PORT[/PROTO]",
                     help="e.g. 8080, 5353/udp, 7000-7010/tcp (tcp when no protocol); "
                     "with an address, 127.0.0.2:8080/udp or [::1]:8443, ask as a "
                     "service binding it would (preflight's question)")
    who.add_argument("--reuse-address", action=argparse.BooleanOptionalAction,
                     help="ask whether a service that sets (or, --no-reuse-address, does "
                     "not set) SO_REUSEADDR could bind each port now, and who stops it "
                     "(default with an address: set, as reuse_address: true)")
    who.set_defaults(**WHO_DEFAULTS)

    status = commands.add_parser(
        "status", help="every configured service: ports, holders, unit state",
        description="Show every configured service: its ports, their holders, and the "
        "state of its unit(s). Exit 0 when no declared port is held by another process.",
    )
    status.set_defaults(handler="status:run")

    pre = commands.add_parser(
        "preflight", help="clear UNIT's declared ports by policy (the ExecStartPre= entry)",
        description="Clear UNIT's declared ports by its policy before it starts: "
        "ExecStartPre=+/usr/bin/portguard preflight %n. Exit 0 clear, 1 blocked, "
        "75 timed out, 77 not permitted, 78 bad config.",
    )
    pre.add_argument("unit", metavar="UNIT", help="the unit being started (%%n)")
    pre.add_argument("--dry-run", action="store_true",
                     help="print and journal what would be done; touch nothing")
    pre.set_defaults(handler="preflight:run")

    daemon = commands.add_parser(
        "daemon", help="the long-lived guard (portguard.service runs it)",
        description="Watch every configured service until SIGTERM: resolve duplicates by "
        "policy as they appear, restart units they blocked, report the rest. Talks to "
        "systemd through sd_notify (Type=notify); SIGHUP re-reads the config. Exit 0 on "
        "SIGTERM, 78 when the config is bad at start.",
    )
    daemon.set_defaults(handler="daemon:run")

    why = commands.add_parser(
        "why", help="why UNIT failed to bind: the journal's words, who holds it now, the fix",
        description="Read UNIT's recent runs in the journal (newest first), find the bind "
        "failure in the daemon's own words, and say for each port who holds it now, what "
        "kind of holder that is for UNIT, and the command that fixes it. Needs no config. "
        "Exit 0 a bind failure was found and its ports are free now, 1 a port is still "
        "held (or unknown), 3 the journal shows no bind failure.",
    )
    why.add_argument("unit", metavar="UNIT", help="the unit that failed, e.g. nginx.service "
                     "or web@blue.service")
    why.set_defaults(handler="why:run")

    discover = commands.add_parser(
        "discover", help="propose a config from the services listening now",
        description="List every service unit that listens now (instances grouped under "
        "their template), with its ports as it binds them, as commented YAML that "
        "check-config accepts. Units portguard should not guard (PID 1, portguard, "
        "protected ones, systemd's own) appear as comments.",
    )
    discover.add_argument("--write", metavar="PATH",
                          help="write the config to PATH (atomically, mode 0644); refuses "
                          "to overwrite an existing file")
    discover.set_defaults(handler="discover:run")

    for name, verb in (("install", "add"), ("uninstall", "remove")):
        sub = commands.add_parser(
            name, help=f"{verb} the drop-in that runs preflight as UNIT's ExecStartPre=",
            description=f"{verb.capitalize()} /etc/systemd/system/UNIT.d/portguard.conf "
            "(one drop-in covers every instance of a template) and reload systemd.",
        )
        sub.add_argument("unit", metavar="UNIT", help="e.g. web.service or web@.service")
        sub.set_defaults(handler="install:run" if name == "install" else "install:run_uninstall")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run one command and return its exit status; the one place errors become statuses."""
    out_stream = stdout if stdout is not None else sys.stdout
    err_stream = stderr if stderr is not None else sys.stderr
    words = list(argv) if argv is not None else sys.argv[1:]
    drop_in = _drop_in_form(words)  # what `install` writes tries the fast path first
    if drop_in is not None and _preflight_fast(*drop_in, err_stream):
        return 0  # ExitStatus.OK; errors (and enum) are imported only past the fast paths
    args = _who_plain(words, out_stream)
    if isinstance(args, int):
        return args
    if args is None:
        from portguard.errors import UsageError
        try:
            args = build_parser().parse_args(list(argv) if argv is not None else None)
        except _HelpExit as done:
            return done.status
        except UsageError as exc:
            print(exc.message, file=err_stream)
            return int(exc.exit_status)
    return _run(args, out_stream, err_stream)


def _run(args: argparse.Namespace, out_stream: TextIO, err_stream: TextIO) -> int:
    """The parsed command, with its collaborators; exceptions become exit statuses."""
    from portguard.app import App
    from portguard.errors import ExitStatus, PortguardError
    from portguard.report.output import Output
    out = Output(out_stream, err_stream, json=args.json,
                 verbosity=-1 if args.quiet else args.verbose)
    handler = _handler(args.handler)

    def make_journal() -> Journal:
        from portguard.report.journal import Journal
        return Journal(echo=False if args.quiet or args.json else None,
                       verbose=args.verbose > 0, stream=err_stream)

    app = App(args.config or None, make_journal=make_journal)
    try:
        return int(handler(args, app, out))
    except PortguardError as exc:
        if out.json and args.command != "preflight":  # preflight wrote its document
            out.document({"error": exc.message, "exit_status": int(exc.exit_status)})
        elif not out.json:
            from portguard.text import shown_lines
            print(f"portguard: {shown_lines(exc.message)}", file=err_stream)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print("portguard: interrupted", file=err_stream)
        return 130
    except BrokenPipeError:
        # stdout closed early (`portguard who 80 | head -1`): not an error worth a trace.
        _silence_stdout()
        return int(ExitStatus.OK)
    except OSError as exc:  # e.g. EMFILE anywhere: fail closed, with a message, no trace
        print(f"portguard: {exc}", file=err_stream)
        return int(ExitStatus.BLOCKED)
    finally:
        app.close()


def _drop_in_form(words: list[str]) -> tuple[str, str] | None:
    """(config file, unit) when argv is a form `install` writes: `preflight UNIT`, or
    `--config PATH preflight UNIT` for a config other than the default; else None."""
    if len(words) == 4 and words[0] == "--config" and words[1]:
        config, words = words[1], words[2:]
    elif len(words) == 2:
        from portguard.app import default_config_file
        config = default_config_file()
    else:
        return None
    if words[0] != "preflight" or words[1].startswith("-"):
        return None
    return config, words[1]


def _preflight_fast(config: str, unit: str, err_stream: TextIO) -> bool:
    """True when the compiled config showed every port of `unit` free (and said so); False
    sends the run the whole way, which decides again from the YAML. Nothing goes to
    $NOTIFY_SOCKET: systemd clears a unit's STATUS= text when it starts the unit again
    (checked by test_preflight_restart), so only a refusal has something to say."""
    from portguard.commands.preflight_fast import attempt
    from portguard.commands.preflight_stop import stop_pending
    from portguard.report.native import Sender
    sender = Sender(stream=err_stream)  # what Journal sends through, without its enums
    try:
        return attempt(config, unit, sender) and not stop_pending()
    except Exception:  # e.g. EMFILE: the whole way decides again and reports it properly
        return False
    finally:
        sender.close()


def _who_plain(words: list[str], out_stream: TextIO) -> argparse.Namespace | int | None:
    """`who PORT ...` in its plainest form, without argparse: 0 when every port was shown
    free (one bind() probe each), else the arguments argparse would give `who` (None: not
    that form, parse it)."""
    if len(words) < 2 or words[0] != "who":
        return None
    from portguard.commands import who_fast
    pairs = who_fast.plain_ports(words[1:])
    if pairs is None:
        return None
    try:
        if who_fast.attempt(pairs, out_stream):
            return 0
    except OSError:
        pass  # e.g. EMFILE: the whole way reports it properly
    return who_fast.arguments(words[1:], pairs)


def _silence_stdout() -> None:
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run() -> None:
    """Console-script entry point (and `python -m portguard`)."""
    if "preflight" in sys.argv[1:]:  # as ExecStartPre=: a stop may come during imports
        from portguard.commands.preflight_stop import catch_early
        catch_early()
    sys.exit(main())
