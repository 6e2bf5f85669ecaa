"""report: tell people and machines what was seen and done.

Owns journal records (`journal`), tables and JSON documents (`tables`), where a command
writes (`output`), the Prometheus textfile (`metrics`) and sd_notify (`notify`). Renders
values that `observe` and `decide` produced. May import `act`, `decide`, `observe`,
`config`, `model`, `errors`; never `commands` or the CLI.
"""
