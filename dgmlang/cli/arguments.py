"""The `dgm` command line: its argument parser, one subcommand per command module."""
from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

from dgmlang import __version__
from dgmlang.cli.fit import cmd_fit
from dgmlang.cli.invert import cmd_invert
from dgmlang.cli.model_files import cmd_check, cmd_graph
from dgmlang.cli.runs import REFERENCE_SCORES, RUN_INFO, SCORE_SAMPLES, THRESHOLD_QUANTILE
from dgmlang.cli.sample import cmd_sample
from dgmlang.cli.score import cmd_score


class _Formatter(argparse.HelpFormatter):
    """Wrap each line of a description on its own, keep indented example lines as they are,
    and show an option's default where it has one."""

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line if line.startswith("  ") or not line
                         else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text}")
    return value


DATA_HELP = ("a .npz (one array per variable), .npy (one array), .csv (columns x[0], x[1], ... and y) "
             "or a built-in data set: digits, digits:test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgm", formatter_class=_Formatter,
        description="Check, draw, fit, sample, invert and score dgm models.",
        epilog="examples:\n"
               "  dgm check examples/*.dgm\n"
               "  dgm fit examples/digits_vae.dgm --data digits --epochs 50 --out runs/vae\n"
               "  dgm sample runs/vae -n 40 -o samples.png\n"
               "  dgm score runs/vae --data digits:test -o scores.csv\n"
               "every command has --help; docs/cli.md is the reference.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="check model files and print one line per model", formatter_class=_Formatter,
                       description="Parse and check .dgm files; print each model's variables and networks.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("graph", help="draw a model's graph and its derived guide", formatter_class=_Formatter,
                       description="Write the model graph and the derived guide graph side by side (.dot, .png or .svg).")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--model", help="which model of the file (needed when it holds several)")
    p.add_argument("-o", "--output", type=Path, help="output file: .dot, .png or .svg (default MODEL.png)")
    p.set_defaults(handler=cmd_graph)

    p = sub.add_parser(
        "fit", help="fit a model to data; writes a run folder", formatter_class=_Formatter,
        description="Fit a model (its networks, params and guide) to data by stochastic variational inference "
                    "and write a run folder: model.dgmfit (the fitted model), loss.csv, loss.png, samples.png, "
                    f"{REFERENCE_SCORES} and {RUN_INFO} (with the default outlier threshold: the "
                    f"{THRESHOLD_QUANTILE:.0%} quantile of the log-likelihoods of the --validation rows, "
                    "or of the training rows without it). "
                    "Ctrl-C stops training and saves the model as it was after the last completed step.",
        epilog="example:\n  dgm fit examples/digits_cvae.dgm --data digits --epochs 100 --out runs/cvae")
    p.add_argument("file", type=Path, metavar="FILE", help="the .dgm model file")
    p.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP)
    p.add_argument("--model", help="which model of the file (needed when it holds several)")
    p.add_argument("--epochs", type=_positive, help="passes over the data (default 200 when --steps is not given)")
    p.add_argument("--steps", type=_positive, help="optimizer steps, instead of --epochs")
    p.add_argument("--batch-size", type=_positive, default=128, help="rows per step")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo", help="the training bound")
    p.add_argument("--num-particles", type=_positive, default=1, help="samples per row (iwae: importance samples)")
    p.add_argument("--validation", metavar="DATA", help="held-out data scored after every epoch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, metavar="RUN", help="the run folder to write (default runs/MODEL)")
    p.add_argument("--no-score", action="store_true",
                   help="skip scoring the reference rows (no default outlier threshold)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_fit)

    p = sub.add_parser(
        "sample", help="draw new data from a fitted model", formatter_class=_Formatter,
        description="Draw N data points from a fitted model. .png: an image grid for image-shaped data (a "
                    "vector of 16, 64, 256... entries or an H x W array), scatter plots otherwise; .npz: every "
                    "variable (data, latents, globals, inputs); .csv: the per-row variables as columns.",
        epilog="examples:\n  dgm sample runs/vae -n 40 -o samples.png\n"
               "  dgm sample runs/cvae -n 10 --input y=3 -o threes.png\n"
               "  dgm sample runs/linreg -n 100 --input u=0.5,1,-1 -o draws.csv")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder from dgm fit (or its model.dgmfit)")
    p.add_argument("-n", type=int, metavar="N", help="how many data points (default: the rows of --inputs)")
    p.add_argument("--input", action="append", metavar="NAME=VALUE",
                   help="an input's value for every sample: a number, or a vector as 1,2,3 (repeatable)")
    p.add_argument("--inputs", metavar="DATA", help="per-sample input values from a data file (one row per sample)")
    p.add_argument("-o", "--output", type=Path, action="append", required=True, metavar="OUT",
                   help="output file: .png, .npz or .csv (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser(
        "invert", help="infer latents and missing entries from (partial) data", formatter_class=_Formatter,
        description="Posterior inference for each row of DATA: the posterior mean and standard deviation of "
                    "every latent (and global), and completions of missing entries (their posterior mean and "
                    "std). An entry is missing where DATA has NaN (an empty CSV cell) or MASK has 0/False; a "
                    "data variable absent from DATA is missing entirely. .npz: NAME:mean, NAME:std, "
                    "NAME:observed arrays; .csv: columns like z:mean[0], z:std[0]; .png: observed / completed / truth.",
        epilog="example:\n  dgm invert runs/vae --data partial.npz --mask mask.npz --truth digits:test "
               "-o completed.png -o posterior.npz")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder from dgm fit (or its model.dgmfit)")
    p.add_argument("--data", required=True, metavar="PARTIAL", help=DATA_HELP + "; NaN marks a missing entry")
    p.add_argument("--mask", metavar="MASK", help="same formats, booleans or 0/1: 1 = observed, 0 = missing")
    p.add_argument("--truth", metavar="DATA", help="the complete data, drawn in the picture and used for the error")
    p.add_argument("-o", "--output", type=Path, action="append", required=True, metavar="OUT",
                   help="output file: .png, .npz or .csv (repeatable)")
    p.add_argument("--num-samples", type=_positive, default=100, help="posterior samples per row")
    p.add_argument("--keep-samples", action="store_true", help="also store every posterior sample in the .npz")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_invert)

    p = sub.add_parser(
        "score", help="log-likelihood of each row and an outlier flag", formatter_class=_Formatter,
        description="Estimate log p(row) for every row of DATA (importance-weighted, with the guide as the "
                    "proposal) and flag rows below a threshold as outliers. Without --threshold the run's "
                    f"default is used: the {THRESHOLD_QUANTILE:.0%} quantile of the reference rows' "
                    "log-likelihoods, computed by dgm fit.",
        epilog="examples:\n  dgm score runs/vae --data digits:test -o scores.csv\n"
               "  dgm score runs/vae --data new.npz -o scores.csv --threshold 5%\n"
               "  dgm score runs/vae --data new.npz -o scores.csv --threshold -120")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder from dgm fit (or its model.dgmfit)")
    p.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP)
    p.add_argument("-o", "--output", type=Path, action="append", required=True, metavar="OUT",
                   help="output file: .csv (columns row, log_prob, outlier) or .npz (repeatable)")
    p.add_argument("--threshold", metavar="T",
                   help="flag rows with log-likelihood below T: a number, or P%% for that quantile of "
                        "the reference scores")
    p.add_argument("--num-samples", type=_positive, default=SCORE_SAMPLES, help="importance samples per row")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_score)
    return parser
