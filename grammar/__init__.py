"""The dgm grammar, `dgm.lark`: a data file, installed as the package `dgmlang.grammar`.

It lives at the repository root (beside `dgmlang/`, `examples/`, `tests/`, `docs/`) and is
shipped inside the wheel; `dgmlang.parse.grammar_text` reads it with `importlib.resources`.
"""
