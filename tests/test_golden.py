"""Golden tests, in stanc3's style: every `programs/good/*.dgm` checks, and every
`programs/bad/*.dgm` fails with exactly the text of its `.expected` file (what a user sees).

After a deliberate change of wording, rewrite the expected files with

    DGM_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py

and review every changed message by eye (`git diff tests/programs/bad`): each must point at
the right line and column and read well.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

from dgmlang.check import check
from dgmlang.errors import DGMError, DGMErrors
from dgmlang.parse import parse

PROGRAMS = Path(__file__).parent / "programs"
EXAMPLES = Path(__file__).parent.parent / "examples"
GOOD = sorted((PROGRAMS / "good").glob("*.dgm"))
BAD = sorted((PROGRAMS / "bad").glob("*.dgm"))
REGENERATE = os.environ.get("DGM_REGENERATE_GOLDEN") == "1"


def _build_graph():
    """`dgmlang.graph.build_graph` where that module exists (it finds cycles)."""
    try:
        return importlib.import_module("dgmlang.graph").build_graph
    except ModuleNotFoundError:
        return None


def front_end(path: Path):
    """Parse and check `path` (spans name the bare file name), then build each model's
    graph; every error of the graph stage is collected as `check` collects its own."""
    models = check(parse(path.read_text(encoding="utf-8"), path.name))
    build = _build_graph()
    if build is not None:
        errors: list[DGMError] = []
        for model in models:
            try:
                build(model)
            except DGMErrors as err:
                errors.extend(err.errors)
            except DGMError as err:
                errors.append(err)
        if errors:
            raise errors[0] if len(errors) == 1 else DGMErrors(errors)
    return models


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_program_checks(path):
    models = front_end(path)
    assert models
    if len(models) == 1:
        assert models[0].name == path.stem, "a one-model file is named after its model"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_program_gives_the_expected_message(path):
    expected_file = path.with_suffix(".expected")
    with pytest.raises(DGMError) as info:
        front_end(path)
    message = str(info.value)
    if REGENERATE:
        expected_file.write_text(message + "\n", encoding="utf-8")
    assert expected_file.exists(), f"missing {expected_file.name}"
    assert message == expected_file.read_text(encoding="utf-8").rstrip("\n")


def test_every_expected_file_has_its_program():
    expected = {p.stem for p in (PROGRAMS / "bad").glob("*.expected")}
    assert expected == {p.stem for p in BAD}


def test_bad_programs_cover_many_errors():
    assert len(BAD) >= 35


def test_bad_messages_point_at_a_line_of_their_file():
    """Every message starts FILE:LINE:COL with a line that exists in the file."""
    for path in BAD:
        text = path.with_suffix(".expected").read_text(encoding="utf-8")
        head = text.split(": ", 1)[0]
        name, line, col = head.rsplit(":", 2)
        assert name == path.name
        lines = path.read_text(encoding="utf-8").split("\n")
        assert 1 <= int(line) <= len(lines), path.name
        assert 1 <= int(col) <= len(lines[int(line) - 1]) + 1, path.name


def test_examples_are_the_acceptance_corpus():
    """examples/ holds the corpus (beside the use-case models); the golden good programs hold
    the same corpus files."""
    names = ["digits_cvae.dgm", "digits_hvae.dgm", "digits_vae.dgm", "gmm.dgm", "linreg.dgm", "ppca.dgm"]
    present = {p.name for p in EXAMPLES.glob("*.dgm")}
    assert set(names) <= present, f"missing from examples/: {sorted(set(names) - present)}"
    for name in names:
        example = (EXAMPLES / name).read_text(encoding="utf-8")
        assert example == (PROGRAMS / "good" / name).read_text(encoding="utf-8")
        assert example.startswith("#"), "an example opens with a comment saying what it is for"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.dgm")), ids=lambda p: p.stem)
def test_example_checks(path):
    (model,) = front_end(path)
    assert model.name == path.stem


def test_error_examples_in_the_language_doc_are_the_golden_messages():
    """docs/language.md shows bad programs and their messages; they must be the real ones."""
    doc = (Path(__file__).parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    examples = re.findall(r"`(\w+)\.dgm`:\n\n```dgm\n(.*?)\n```\n\n```text\n(.*?)\n```", doc, re.S)
    assert len(examples) >= 35
    for name, source, message in examples:
        path = PROGRAMS / "bad" / f"{name}.dgm"
        assert source == path.read_text(encoding="utf-8").rstrip("\n"), name
        assert message == path.with_suffix(".expected").read_text(encoding="utf-8").rstrip("\n"), name


def test_good_examples_in_the_language_doc_check():
    doc = (Path(__file__).parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```dgm\n(.*?)\n```", doc, re.S)
    whole = [b for b in blocks if b.lstrip().startswith(("model", "#"))]
    bad_sources = {p.read_text(encoding="utf-8").rstrip("\n") for p in BAD}
    checked = 0
    for block in whole:
        if block not in bad_sources:
            assert check(parse(block, "doc.dgm"))
            checked += 1
    assert checked >= 3
