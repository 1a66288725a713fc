"""Fuzzing the front end: nothing but a DGMError ever reaches a user.

(a) Programs generated from the grammar itself (`hypothesis.extra.lark.from_lark`) either
parse or give a `DGMSyntaxError`, and a parsed one survives the print/parse round trip.
(b) Random mutations of the acceptance corpus (characters and tokens inserted, deleted,
swapped): `parse` gives a program or a `DGMSyntaxError`, and `check` (when the checker is
there) gives models or a `DGMError`.
"""
from __future__ import annotations

import re
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from dgmlang.errors import DGMError, DGMSyntaxError
from dgmlang.parse import KEYWORDS, grammar_text, parse
from dgmlang.printer import format_program

from test_parse import CORPUS

try:
    from dgmlang.check import check
except ImportError:  # the checker is another module; fuzz the parser alone until it exists
    check = None

FUZZ = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# The corpus, one model (with the comment line that follows it) per text.
MODELS = ["model" + block for block in CORPUS.split("\nmodel")[1:]]


def roundtrip_holds(program) -> bool:
    return parse(format_program(program), "formatted.dgm") == program


# ---------------------------------------------------------------- (a) from the grammar


def grammar_for_generation() -> Lark:
    text = grammar_text()
    return Lark(text, parser="lalr", maybe_placeholders=True)


# Names a model would use, a few words with a meaning (types, guide options, networks), and
# one reserved word, so the reserved-word error is reached too.
GENERATED_NAMES = st.sampled_from(
    ["x", "z", "z1", "mu", "W", "K", "_h", "Normal", "Binomial", "mlp", "exp", "hidden",
     "family", "normal", "real", "int", "positive", "unit", "simplex", "data"]
)
GENERATED_NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**20).map(str),
    st.floats(min_value=0, max_value=1e300, allow_nan=False).map(repr),
    st.sampled_from([".5", "1.", "1e-3", "2E+2", "007", "0.0"]),
)


def generation_strategies(grammar: Lark) -> dict:
    """A strategy per terminal. Every token is followed by a space so that neighbours lex
    apart ('data' 'x' must not become 'datax'); comments only inside line breaks, since a
    comment anywhere else would swallow the rest of its line."""
    explicit = {
        terminal.name: st.just(terminal.pattern.value + " ")
        for terminal in grammar.terminals
        if terminal.pattern.type == "str"
    }
    explicit["NAME"] = GENERATED_NAMES.map(lambda name: name + " ")
    explicit["NUMBER"] = GENERATED_NUMBERS.map(lambda number: number + " ")
    explicit["_NEWLINE"] = st.sampled_from(["\n", "\n\n    ", "  # a comment\n\t", "\r\n", "\n# c\n\n"])
    explicit["WHITESPACE"] = st.sampled_from([" ", "\t", "  \f"])
    explicit["COMMENT"] = st.just(" ")
    return explicit


def test_programs_generated_from_the_grammar_parse_and_round_trip():
    grammar = grammar_for_generation()
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=300)
    @given(from_lark(grammar, start="start", explicit=generation_strategies(grammar)))
    def run(text):
        try:
            program = parse(text, "generated.dgm")
        except DGMSyntaxError:
            outcomes["syntax error"] += 1
            return
        outcomes["parsed"] += 1
        assert roundtrip_holds(program), text

    run()
    print(outcomes)
    # The grammar's own programs mostly parse; those that do not break a rule the grammar
    # leaves to the parser (a reserved word, an unknown type, a repeated keyword...).
    assert outcomes["parsed"] >= 0.5 * sum(outcomes.values()), outcomes
    assert outcomes["syntax error"] > 0, outcomes


# ---------------------------------------------------------------- (b) mutations of the corpus

INSERTED_CHARS = "()[]{}~=,:;#-+*/.\n\t 019azZ_é\x00\"'\\@$"
TOKEN_PATTERN = re.compile(r"\s+|#[^\n]*|[A-Za-z_]\w*|\d*\.\d+|\d+|\*\*|.", re.S)
VOCABULARY = [
    "model", "data", "input", "latent", "global", "param", "const", "let", "net", "guide",
    "z", "x", "mu", "c", "y", "W", "zz", "Normal", "Normall", "Poisson", "Categorical", "mlp",
    "deconv", "exp", "onehot", "zeros", "hidden", "family", "mvn", "logits", "probs", "int",
    "positive", "0", "1", "3", "-1", "0.5", "1e-3", "(", ")", "[", "]", "{", "}", ",", ":", ";",
    "=", "~", "+", "-", "*", "/", "**", "\n", " ", "#",
]


def mutate_chars(text: str, edits: list[tuple[str, float, str]]) -> str:
    chars = list(text)
    for kind, where, char in edits:
        at = int(where * len(chars)) if chars else 0
        if kind == "insert" or not chars:
            chars.insert(at, char)
        elif kind == "delete":
            del chars[min(at, len(chars) - 1)]
        elif kind == "replace":
            chars[min(at, len(chars) - 1)] = char
        else:  # swap neighbours
            at = min(at, len(chars) - 2)
            if at >= 0:
                chars[at], chars[at + 1] = chars[at + 1], chars[at]
    return "".join(chars)


def mutate_tokens(text: str, edits: list[tuple[str, float, float, str]]) -> str:
    tokens = TOKEN_PATTERN.findall(text)
    for kind, where, other, word in edits:
        at = int(where * len(tokens)) if tokens else 0
        last = len(tokens) - 1
        if kind == "insert" or not tokens:
            tokens.insert(at, word)
        elif kind == "delete":
            del tokens[min(at, last)]
        elif kind == "replace":
            tokens[min(at, last)] = word
        elif kind == "duplicate":
            tokens.insert(at, tokens[min(at, last)])
        else:  # swap two tokens anywhere
            a, b = min(at, last), min(int(other * len(tokens)), last)
            tokens[a], tokens[b] = tokens[b], tokens[a]
    return "".join(tokens)


UNIT = st.floats(min_value=0, max_value=1, exclude_max=True)
CHAR_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace", "swap"]), UNIT, st.sampled_from(INSERTED_CHARS)
    ),
    min_size=1,
    max_size=4,
)
TOKEN_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace", "duplicate", "swap"]),
        UNIT,
        UNIT,
        st.sampled_from(VOCABULARY),
    ),
    min_size=1,
    max_size=4,
)


def front_end_outcome(text: str) -> str:
    """What the front end makes of `text`; anything but a DGMError fails the test."""
    try:
        program = parse(text, "mutant.dgm")
    except DGMSyntaxError:
        return "syntax error"
    assert roundtrip_holds(program), text
    if check is None:
        return "parsed"
    try:
        check(program)
    except DGMError:
        return "check error"
    return "checked"


def test_mutated_corpus_characters_give_only_dgm_errors():
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=900)
    @given(st.sampled_from(MODELS), CHAR_EDITS)
    def run(model, edits):
        outcomes[front_end_outcome(mutate_chars(model, edits))] += 1

    run()
    print(outcomes)
    assert outcomes["syntax error"] > 0 and outcomes["syntax error"] < sum(outcomes.values()), outcomes


def test_mutated_corpus_tokens_give_only_dgm_errors():
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=900)
    @given(st.sampled_from(MODELS), TOKEN_EDITS)
    def run(model, edits):
        outcomes[front_end_outcome(mutate_tokens(model, edits))] += 1

    run()
    print(outcomes)
    assert outcomes["syntax error"] > 0 and outcomes["syntax error"] < sum(outcomes.values()), outcomes


NAME_PATTERN = re.compile(r"[A-Za-z_]\w*")
NUMBER_PATTERN = re.compile(r"\d*\.\d+|\d+")
NAMES = [word for word in VOCABULARY if NAME_PATTERN.fullmatch(word) and word not in KEYWORDS]
NUMBERS = ["0", "1", "2", "3", "16", "100000", "0.5", "2.5", "1e-3", "1e9", "0.0"]
WELL_FORMED_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["name", "number", "delete line", "duplicate line", "swap lines"]),
        UNIT,
        UNIT,
        st.integers(min_value=0, max_value=10**6),
    ),
    min_size=1,
    max_size=3,
)


def mutate_keeping_syntax(text: str, edits: list[tuple[str, float, float, int]]) -> str:
    """Edits that mostly keep a program well formed, so that the checker sees it: a name or
    a number replaced by another, a line deleted, duplicated or moved (a line without braces:
    moving a brace breaks the syntax, which the other fuzzers cover)."""
    for kind, where, other, choice in edits:
        if kind in ("name", "number"):
            pattern, words = (NAME_PATTERN, NAMES) if kind == "name" else (NUMBER_PATTERN, NUMBERS)
            found = [m for m in pattern.finditer(text) if m.group() not in KEYWORDS]
            if found:
                m = found[int(where * len(found))]
                text = text[: m.start()] + words[choice % len(words)] + text[m.end() :]
            continue
        lines = text.split("\n")
        movable = [i for i, line in enumerate(lines) if "{" not in line and "}" not in line] or [0]
        at, to = movable[int(where * len(movable))], movable[int(other * len(movable))]
        if kind == "delete line":
            del lines[at]
        elif kind == "duplicate line":
            lines.insert(to, lines[at])
        else:
            lines[at], lines[to] = lines[to], lines[at]
        text = "\n".join(lines)
    return text


def test_well_formed_mutations_give_only_dgm_errors():
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=600)
    @given(st.sampled_from(MODELS), WELL_FORMED_EDITS)
    def run(model, edits):
        outcomes[front_end_outcome(mutate_keeping_syntax(model, edits))] += 1

    run()
    print(outcomes)
    parsed = sum(outcomes.values()) - outcomes["syntax error"]
    assert parsed >= 0.5 * sum(outcomes.values()), outcomes


def test_the_unmutated_corpus_passes_the_front_end():
    expected = "parsed" if check is None else "checked"
    assert [front_end_outcome(model) for model in MODELS] == [expected] * len(MODELS)
