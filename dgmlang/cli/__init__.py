"""The `dgm` command: check, graph, fit, sample, invert, score.

``dgm fit`` writes a *run folder* that the other commands read::

    RUN/model.dgmfit      the fitted model (CompiledModel.save; dgmlang.load_fitted reads it)
    RUN/loss.csv          the loss per step (and the validation loss per epoch)
    RUN/loss.png          the loss curve
    RUN/samples.png       samples from the fitted model (an image grid for image data)
    RUN/reference_scores.csv  the log-likelihood of each validation row (training rows when
                          there is no --validation), for outlier thresholds
    RUN/run.json          how it was fitted, and the default outlier threshold

A wrong command line (an unknown option, a value of the wrong type or beyond its limit)
exits 2 with a usage line, as argparse does; a mistake found in what the command reads (a
model file, a data file, a run folder, an output path, a value that does not fit the model)
exits 1 with the rendered DGMError and no traceback. Ctrl-C (SIGINT) or SIGTERM during
`fit`'s training stops it after the step in progress, saves the checkpoint and exits 130 or
143; `dgm fit --resume RUN` continues the run. Every file is written to a temporary
file in its folder and renamed over the target (`shared.write_atomic`), so a symlink planted
at an output path is replaced, never followed. docs/cli.md is the
reference.

The package, by concern: `arguments` (the argument parser), `runs` (run folders: writing,
opening, reference scores and outlier thresholds), `shared` (output names, chunked scoring,
sample pictures), and one module per command group: `model_files` (check, graph), `fit`,
`sample`, `invert`, `score`. `python -m dgmlang` and `python -m dgmlang.cli` run `main`.

>>> main(["check", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
SystemExit: 0
"""
from __future__ import annotations

import os
import sys
import warnings

from dgmlang.cli.arguments import build_parser, check_arguments
from dgmlang.cli.model_files import summary
from dgmlang.cli.shared import say
from dgmlang.cli.runs import CHECKPOINT, REFERENCE_SCORES, RUN_INFO
from dgmlang.errors import DGMError, DGMWarning

__all__ = ["main", "run", "build_parser", "summary", "CHECKPOINT", "RUN_INFO", "REFERENCE_SCORES"]


def run() -> None:
    """`main` as a program: exit with its status. A process started by torchrun (`dgm fit
    --nproc N`'s workers) ends with `os._exit` once its output is flushed: gloo's threads,
    still alive while the interpreter shuts down, could otherwise abort it with SIGABRT
    ("terminate called without an active exception", about one run in five) after its work
    was done and saved."""
    code = main()
    distributed = sys.modules.get("dgmlang.distributed")  # imported by a command that trains
    if distributed is not None and distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start `dgm fit --nproc N`'s processes
    try:
        with warnings.catch_warnings():  # restores the filters and showwarning afterwards
            warnings.simplefilter("always", DGMWarning)
            warnings.showwarning = _show_warning
            return args.handler(args)
    except DGMError as err:
        say(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A `DGMWarning` as one line on stderr, ``dgm: warning: ...`` (no source location:
    it is about the user's model or data, not dgmlang's code); others as Python shows them."""
    if issubclass(category, DGMWarning):
        print(f"dgm: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)
