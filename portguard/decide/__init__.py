"""decide: pure judgements on observed facts.

Owns the kernel's bind() rules (`conflicts`; `observe.kernel.probe` asks the kernel itself
the same question when the rules cannot know a peer's flags), what each
holder is for a service (`classify`: self, twin, stray, foreign, lingering), what to do
about it (`policy`) and the daemon's flap guard (`flap`). Takes values from `config` and
`observe`; never signals, stops or prints. May import `config`, `observe`, `model`, `errors`.
"""
