"""config: the YAML file a person writes, read strictly into frozen values.

Owns the schema (`schema`), the value grammars (`values`: ports, durations, signals) and
the strict YAML layer (`strictyaml`). First stage of the data path: imports only
`portguard.model` and `portguard.errors`.
"""

# The longest port range a spec may declare: room for RTP ranges (Asterisk: 10000-20000);
# 1-65535 is a slip. Here, not in `values`, so that `who`'s fast path (commands/who_fast)
# reads the same bound without importing `values` (`re`, `signal`, `typing`).
MAX_RANGE_PORTS = 20000
