"""The code blocks of docs/tutorial.md and docs/python-dsl.md run, in order, as a reader would
run them (issue 10, "docs that stay true").

Each document is one test. Its blocks share one namespace, like the cells of a notebook, and
run in a fresh temporary folder (the current directory) holding a copy of `examples/*.dgm`, so
the docs' relative paths work and nothing is written into the repository:

* a ```python block is executed; an exception fails the test, naming the block's line;
* a ```sh / ```console / ```bash block: each ``$ dgm ...`` line is run through
  `dgmlang.cli.main` and must exit 0. For commands whose output does not depend on training
  (`dgm check`, `dgm graph`) the printed lines must be the ones the doc shows; for the others
  every ``wrote ...`` line the doc shows must be printed;
* an untagged block right after a paragraph ending in "prints:" must be what the preceding
  python block printed (python-dsl.md's `m.to_dgm()` output).

Where the docs train, the test trains at tiny scale: the substitutions below are applied to
the text of the python blocks, and `dgm fit` / `invert` / `score` get the extra options in
`CLI_SCALE`. Every substitution must match somewhere in its document, so the table follows the
docs when they change. The numbers the docs show come from the full-scale runs they describe
(docs/tutorial.md says which); this test checks that the code runs, not the numbers.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from dgmlang.cli import main as dgm_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: (document, text in a python block, replacement): training lengths and sample counts cut
#: down so the whole file stays well under a minute.
PYTHON_SCALE = {
    "tutorial.md": [
        ("epochs=200", "epochs=1"),
        ("num_samples=100)", "num_samples=2)"),
        ("num_samples=1000)", "num_samples=10)"),
    ],
    "python-dsl.md": [],
}
#: Extra options given to a `dgm` command of a shell block, by subcommand.
CLI_SCALE = {
    "fit": ["--steps", "2", "-q"],
    "invert": ["--num-samples", "2", "-q"],
    "score": ["--num-samples", "10", "-q"],
}
#: Subcommands whose printed lines must equal the doc's (they do not depend on training).
EXACT_OUTPUT = {"check", "graph"}

SHELL = {"sh", "console", "bash", "shell"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def blocks(text: str) -> list[tuple[str, str, int, str]]:
    """The fenced blocks of a markdown text at the start of a line: (language, body, line of
    the opening fence, the text just before the fence)."""
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((match.group(1), match.group(2), line, text[:match.start()].rstrip()))
    return found


def scaled(doc: str, code: str, used: set[int]) -> str:
    for i, (old, new) in enumerate(PYTHON_SCALE[doc]):
        if old in code:
            code = code.replace(old, new)
            used.add(i)
    return code


def run_dgm(command: str, expected: list[str], where: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "dgm", where
    args = argv[1:]
    sub = args[0]
    args += CLI_SCALE.get(sub, [])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = dgm_main(args)
    printed = out.getvalue().splitlines()
    assert status == 0, (f"{where}: `{command}` exited {status}:\n"
                         f"{err.getvalue()}{out.getvalue()}")
    if sub in EXACT_OUTPUT:
        assert printed == expected, (f"{where}: `{command}` printed {printed}, "
                                     f"the doc shows {expected}")
    else:
        for line in expected:
            if line.startswith("wrote "):
                assert line in printed, f"{where}: `{command}` did not print {line!r}: {printed}"


def run_shell_block(body: str, where: str) -> int:
    """Runs the block's `$ dgm ...` commands; returns how many ran."""
    commands: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:].strip(), []))
        elif commands:
            commands[-1][1].append(line)
    ran = 0
    for command, expected in commands:
        if command.startswith("dgm "):
            run_dgm(command, expected, where)
            ran += 1
    return ran


def run_document(doc: str) -> dict[str, int]:
    text = (DOCS / doc).read_text()
    namespace: dict = {"__name__": f"docs_{doc.replace('-', '_').replace('.', '_')}"}
    used: set[int] = set()
    counts = {"python": 0, "dgm": 0, "prints": 0}
    last_printed = None
    for language, body, line, before in blocks(text):
        where = f"docs/{doc}:{line}"
        if language == "python":
            code = compile(scaled(doc, body, used), where, "exec")
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(code, namespace)
            except Exception as err:
                raise AssertionError(
                    f"the python block at {where} raised {type(err).__name__}: {err}") from err
            last_printed = out.getvalue()
            counts["python"] += 1
        elif language in SHELL:
            counts["dgm"] += run_shell_block(body, where)
        elif language == "" and before.endswith("prints:") and last_printed is not None:
            assert last_printed.rstrip("\n") == body.rstrip("\n"), (
                f"{where}: the doc says the block before prints\n{body}\nbut it printed\n{last_printed}")
            counts["prints"] += 1
    unused = [pair for i, pair in enumerate(PYTHON_SCALE[doc]) if i not in used]
    assert not unused, f"docs/{doc} no longer contains {unused}: update PYTHON_SCALE in {__file__}"
    return counts


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary current directory with the repository's model files under examples/."""
    (tmp_path / "examples").mkdir()
    for path in sorted((ROOT / "examples").glob("*.dgm")):
        shutil.copy(path, tmp_path / "examples" / path.name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tutorial_runs(workdir):
    counts = run_document("tutorial.md")
    # sections 5, 7 and 8 in Python; check, graph, fit, sample, invert and score on the command line
    assert counts["python"] >= 3 and counts["dgm"] >= 8, counts
    assert (workdir / "runs" / "vae" / "model.dgmfit").exists()
    assert (workdir / "vae.dgmfit").exists() and (workdir / "mine.npz").exists()


def test_python_dsl_runs(workdir):
    counts = run_document("python-dsl.md")
    assert counts["python"] >= 2 and counts["prints"] >= 1, counts


def test_blocks_are_found():
    text = ("intro\n```python\nx = 1\n```\nsay it prints:\n```\n1\n```\n"
            "  ```python\nindented\n  ```\n")   # an indented fence is not a block
    assert blocks(text) == [
        ("python", "x = 1\n", 2, "intro"),
        ("", "1\n", 6, "intro\n```python\nx = 1\n```\nsay it prints:"),
    ]
