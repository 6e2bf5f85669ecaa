"""Where a command writes: stdout for results (a table or one JSON document), stderr for
diagnostics. Built by the CLI and handed to each command. Text goes out `shown_lines`:
whatever a process named itself, no control character reaches the terminal."""

from __future__ import annotations

from portguard.text import shown_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO


class Output:
    """Where a command writes: stdout for results, stderr for diagnostics."""

    def __init__(self, out: TextIO, err: TextIO, *, json: bool = False,
                 verbosity: int = 0) -> None:
        self.out = out
        self.err = err
        self.json = json
        self.verbosity = verbosity  # -1 quiet, 0 normal, 1+ verbose

    def result(self, text: str) -> None:
        print(shown_lines(text), file=self.out)

    def document(self, doc: dict[str, Any]) -> None:
        import json
        json.dump(doc, self.out, indent=2, sort_keys=False)
        self.out.write("\n")

    def error(self, text: str) -> None:
        print(shown_lines(text), file=self.err)
