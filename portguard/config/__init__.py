"""config: the YAML file a person writes, read strictly into frozen values.

Owns the schema (`schema`), the value grammars (`values`: ports, durations, signals) and
the strict YAML layer (`strictyaml`). First stage of the data path: imports only
`portguard.model` and `portguard.errors`.
"""
