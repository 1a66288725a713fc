"""The `dgm` command line: its argument parser, one subcommand per command module."""
from __future__ import annotations

import argparse
import json
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
from dgmlang.cli.shared import (MAX_EPOCHS, MAX_INPUT_CHARS, MAX_INPUT_DEPTH, MAX_NUM_PARTICLES, MAX_NUM_SAMPLES,
                                MAX_REFINE, MAX_ROWS, MAX_SEED, MAX_STEPS, OUTPUT_FORMATS)

GRAPH_FORMATS = (".dot", ".png", ".svg")
MAX_THREADS = 1024  # --threads
SCORE_FORMATS = (".csv", ".npz")
#: --nproc: processes on one machine (more machines: torchrun --nnodes, docs/scaling.md)
MAX_NPROC = 256


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



def _shown(text: str, width: int = 40) -> str:
    """`text` quoted for a message, cut short when long."""
    return repr(text) if len(text) <= width else repr(text[:width]) + f"... ({len(text):,} characters)"


def _whole(low: int, high: int):
    """An argparse type: a whole number in low..high (anything else is a usage error, status 2)."""
    def parse(text: str) -> int:
        digits = text.strip()
        if len(digits.lstrip("+-")) > 30 and digits.lstrip("+-").isdecimal():
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high:,}, "
                                             f"not a {len(digits.lstrip('+-'))}-digit one")
        try:
            value = int(digits) if "_" not in digits else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {_shown(text)}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number in {low}..{high:,}, not {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {_shown(text)}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, not {_shown(text)}")
    return value


def _output(allowed: tuple[str, ...]):
    """An argparse type: an output file name whose suffix picks one of the allowed formats."""
    def parse(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in allowed:
            raise argparse.ArgumentTypeError(f"cannot write {_shown(text)}: unknown output format "
                                             f"{_shown(path.suffix or path.name, 20)} (use {', '.join(allowed)})")
        return path
    parse.__name__ = "output file"
    return parse


def _threshold(text: str) -> str:
    """--threshold: a finite log-likelihood, or a percentage P% with 0 <= P <= 100."""
    value = text.strip()
    number = value[:-1] if value.endswith("%") else value
    try:
        parsed = float(number)
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"{_shown(text)}: expected a number (a log-likelihood) or a percentage like 1%")
    if value.endswith("%") and not 0 <= parsed <= 100:
        raise argparse.ArgumentTypeError(f"{_shown(text)}: expected a percentage between 0% and 100%")
    return value


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "[":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "]":
            depth -= 1
    return deepest


def _number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _all_numbers(value) -> bool:
    if isinstance(value, list):
        return all(_all_numbers(v) for v in value)
    return _number(value)


def _input_value(text: str) -> tuple[str, object]:
    """--input NAME=VALUE: VALUE a number, a comma-separated vector or a JSON list of numbers,
    parsed with json (never eval) after its size and nesting are checked."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{_shown(text)}: expected NAME=VALUE, e.g. --input y=3 or --input u=0.5,1,2")
    shown = f"--input {_shown(text)}"
    if len(value) > MAX_INPUT_CHARS:
        raise argparse.ArgumentTypeError(f"{shown}: the value is longer than {MAX_INPUT_CHARS:,} characters "
                                         "(give many values with --inputs DATA)")
    if _nesting(value) > MAX_INPUT_DEPTH:
        raise argparse.ArgumentTypeError(f"{shown}: lists nested deeper than {MAX_INPUT_DEPTH}")
    try:
        parsed = json.loads(value) if value.startswith("[") else [json.loads(v) for v in value.split(",")]
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    if parsed is None or not _all_numbers(parsed):
        raise argparse.ArgumentTypeError(f"{shown}: {_shown(value)} is not a number or a list of finite numbers")
    if not value.startswith("[") and len(parsed) == 1:
        parsed = parsed[0]
    return name, parsed


DATA_HELP = ("a .npz (one array per variable), .npy (one array), .csv (columns x[0], x[1], ... and y) "
             "or a built-in data set: digits, digits:test")


def _check_sample(parser: argparse.ArgumentParser, args) -> None:
    if args.n is None and not args.inputs:
        parser.error("how many samples? give -n N (e.g. -n 16), or --inputs DATA for one sample per row")


def _check_fit(parser: argparse.ArgumentParser, args) -> None:
    if args.resume is None:
        if args.file is None or args.data is None:
            parser.error("give the model FILE and --data DATA (or --resume RUN to continue a run)")
        return
    if args.overwrite:
        parser.error("--resume continues a run; --overwrite would delete it: give one of them")


def _add_placement(p: argparse.ArgumentParser, *, saved: bool) -> None:
    """--device and --dtype (docs/cli.md, "Devices")."""
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="where to compute: cpu, cuda, cuda:N (the N-th GPU) or mps (untested)")
    p.add_argument("--dtype", choices=("float32", "float64"),
                   help="the float type to compute in (default: " +
                        ("the one the model was saved in)" if saved else "float32)"))


def _add_guide_order(p: argparse.ArgumentParser) -> None:
    """--guide-order (docs/guides.md, "Elimination orders")."""
    p.add_argument("--guide-order", choices=("nami", "minfill"),
                   help="the elimination order the guide is derived in: nami (NaMI's natural order, "
                        "the default) or minfill (fewer guide inputs on trees and wide graphs)")


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    """What argparse cannot say about one option alone; a usage error (status 2) each. The
    subcommand's own parser (args.parser) prints the usage line."""
    parser = getattr(args, "parser", parser)
    for value in vars(args).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, Path)) and "\0" in str(item):
                parser.error("an argument holds a NUL character")
    check = getattr(args, "check", None)
    if check is not None:
        check(parser, args)


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
    p.set_defaults(handler=cmd_check, parser=p)

    p = sub.add_parser("graph", help="draw a model's graph and its derived guide", formatter_class=_Formatter,
                       description="Write the model graph and the derived guide graph side by side (.dot, .png or .svg).")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--model", help="which model of the file (needed when it holds several)")
    p.add_argument("-o", "--output", type=_output(GRAPH_FORMATS), help="output file: .dot, .png or .svg (default MODEL.png)")
    _add_guide_order(p)
    p.set_defaults(handler=cmd_graph, parser=p)

    p = sub.add_parser(
        "fit", help="fit a model to data; writes a run folder", formatter_class=_Formatter,
        description="Fit a model (its networks, params and guide) to data by stochastic variational inference "
                    "and write a run folder: model.dgmfit (the fitted model), loss.csv, loss.png, samples.png, "
                    f"{REFERENCE_SCORES} and {RUN_INFO} (with the default outlier threshold: the "
                    f"{THRESHOLD_QUANTILE:.0%} quantile of the log-likelihoods of the --validation rows, "
                    "or of the training rows without it). "
                    "The checkpoint is written every 60 s (--checkpoint-seconds), every --checkpoint-every "
                    "steps and at the end. Ctrl-C (SIGINT) or SIGTERM stops training after the step in "
                    "progress, saves the checkpoint and exits 130 or 143; --resume RUN continues such a run "
                    "(or one killed outright) from its last checkpoint, ending exactly where the uninterrupted "
                    "run would with the same --threads.",
        epilog="examples:\n  dgm fit examples/digits_cvae.dgm --data digits --epochs 100 --out runs/cvae\n"
               "  dgm fit examples/digits_vae.dgm --data digits --mask mask.npz --out runs/vae-half\n"
               "  dgm fit --resume runs/cvae")
    p.add_argument("file", type=Path, metavar="FILE", nargs="?",
                   help="the .dgm model file (with --resume: optional, checked against the run's model text)")
    p.add_argument("--data", metavar="DATA",
                   help=DATA_HELP + " (required; with --resume: the run's data unless given)")
    p.add_argument("--model", help="which model of the file (needed when it holds several)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_whole(1, MAX_EPOCHS),
                        help="passes over the data (default 200 when --steps is not given)")
    length.add_argument("--steps", type=_whole(1, MAX_STEPS), help="optimizer steps, instead of --epochs")
    p.add_argument("--batch-size", type=_whole(1, MAX_ROWS), help="rows per step, per process with --nproc (default: 128)")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (default: 0.001)")
    p.add_argument("--objective", choices=("elbo", "iwae"), help="the training bound (default: elbo)")
    p.add_argument("--num-particles", type=_whole(1, MAX_NUM_PARTICLES),
                   help="samples per row (iwae: importance samples) (default: 1)")
    p.add_argument("--mask", metavar="MASK",
                   help="which entries of --data are observed: same formats, booleans or 0/1 (1 = observed, "
                        "0 = missing; NaN in --data is missing too); with --resume: the run's unless given")
    p.add_argument("--validation", metavar="DATA",
                   help="held-out data scored after every epoch (with --resume: the run's unless given)")
    p.add_argument("--seed", type=_whole(0, MAX_SEED), help="random seed (default: 0)")
    p.add_argument("--compile", action="store_true",
                   help="run the training step through torch.compile (inductor) after the first step; "
                        "prints the warm-up time; falls back to eager steps with a warning where it cannot")
    p.add_argument("--threads", type=_whole(1, MAX_THREADS), metavar="N",
                   help="CPU threads torch may use (torch.set_num_threads; default: torch's choice, or the "
                        "resumed run's); a resumed run ends bit-identical to an uninterrupted one with the "
                        "same number")
    p.add_argument("--checkpoint-every", type=_whole(1, MAX_STEPS), metavar="K",
                   help="also write the checkpoint every K steps")
    p.add_argument("--checkpoint-seconds", type=_positive_float, default=60.0, metavar="S",
                   help="write the checkpoint whenever S seconds have passed since the last one")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue the run in the folder RUN from its checkpoint, with its settings, model "
                        "text and data (options given again must agree with the run's)")
    p.add_argument("--out", type=Path, metavar="RUN", help="the run folder to write (default runs/MODEL)")
    p.add_argument("--nproc", type=_whole(1, MAX_NPROC), metavar="N",
                   help="train in N processes on this machine (torch.distributed, gloo on the CPU); "
                        "--batch-size rows each per step (default: 1, or the resumed run's)")
    p.add_argument("--overwrite", action="store_true",
                   help="fit into a run folder that already holds a run, deleting that run's files first")
    p.add_argument("--no-score", action="store_true",
                   help="skip scoring the reference rows (no default outlier threshold)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_guide_order(p)
    _add_placement(p, saved=False)
    p.set_defaults(handler=cmd_fit, check=_check_fit, parser=p)

    p = sub.add_parser(
        "sample", help="draw new data from a fitted model", formatter_class=_Formatter,
        description="Draw N data points from a fitted model. .png: an image grid for image-shaped data (a "
                    "vector of 16, 64, 256... entries or an H x W array), scatter plots otherwise; .npz: every "
                    "variable (data, latents, globals, inputs); .csv: the per-row variables as columns.",
        epilog="examples:\n  dgm sample runs/vae -n 40 -o samples.png\n"
               "  dgm sample runs/cvae -n 10 --input y=3 -o threes.png\n"
               "  dgm sample runs/linreg -n 100 --input u=0.5,1,-1 -o draws.csv")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder from dgm fit (or its model.dgmfit)")
    p.add_argument("-n", type=_whole(1, MAX_ROWS), metavar="N", help="how many data points (default: the rows of --inputs)")
    p.add_argument("--input", action="append", type=_input_value, metavar="NAME=VALUE",
                   help="an input's value for every sample: a number, or a vector as 1,2,3 (repeatable)")
    p.add_argument("--inputs", metavar="DATA", help="per-sample input values from a data file (one row per sample)")
    p.add_argument("-o", "--output", type=_output(OUTPUT_FORMATS), action="append", required=True, metavar="OUT",
                   help="output file: .png, .npz or .csv (repeatable)")
    p.add_argument("--seed", type=_whole(0, MAX_SEED), default=0, help="random seed")
    _add_placement(p, saved=True)
    p.set_defaults(handler=cmd_sample, check=_check_sample, parser=p)

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
    p.add_argument("-o", "--output", type=_output(OUTPUT_FORMATS), action="append", required=True, metavar="OUT",
                   help="output file: .png, .npz or .csv (repeatable)")
    p.add_argument("--num-samples", type=_whole(1, MAX_NUM_SAMPLES), default=100, help="posterior samples per row")
    p.add_argument("--keep-samples", action="store_true", help="also store every posterior sample in the .npz")
    p.add_argument("--method", choices=("resample", "gibbs"), default="resample",
                   help="for rows with missing entries: importance resampling from the guide (fast) or "
                        "Metropolis-within-Gibbs chains (slow; see docs/missing-data.md)")
    p.add_argument("--refine", type=_whole(0, MAX_REFINE), default=0, metavar="STEPS",
                   help="first refine the guide row by row: STEPS Adam steps on each fully observed row's "
                        "ELBO, the networks fixed (for posteriors sharper than the guide; see docs/inference.md)")
    p.add_argument("--seed", type=_whole(0, MAX_SEED), default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_placement(p, saved=True)
    p.set_defaults(handler=cmd_invert, parser=p)

    p = sub.add_parser(
        "score", help="log-likelihood of each row and an outlier flag", formatter_class=_Formatter,
        description="Estimate log p(row) for every row of DATA (importance-weighted, with the guide as the "
                    "proposal) and flag rows below a threshold as outliers. Without --threshold the run's "
                    f"default is used: the {THRESHOLD_QUANTILE:.0%} quantile of the reference rows' "
                    "log-likelihoods, computed by dgm fit.",
        epilog="examples:\n  dgm score runs/vae --data digits:test -o scores.csv\n"
               "  dgm score runs/vae --data new.npz -o scores.csv --threshold 5%\n"
               "  dgm score runs/vae --data new.npz -o scores.csv --threshold -120\n"
               "  dgm score runs/vae --data partial.npz --mask mask.npz -o scores.csv")
    p.add_argument("run", type=Path, metavar="RUN", help="a run folder from dgm fit (or its model.dgmfit)")
    p.add_argument("--data", required=True, metavar="DATA", help=DATA_HELP + "; NaN marks a missing entry")
    p.add_argument("--mask", metavar="MASK",
                   help="same formats, booleans or 0/1: 1 = observed, 0 = missing; a row's score is then the "
                        "log-likelihood of its observed entries")
    p.add_argument("-o", "--output", type=_output(SCORE_FORMATS), action="append", required=True, metavar="OUT",
                   help="output file: .csv (columns row, log_prob, outlier, complete) or .npz (repeatable)")
    p.add_argument("--threshold", metavar="T", type=_threshold,
                   help="flag rows with log-likelihood below T: a number, or P%% for that quantile of "
                        "the reference scores")
    p.add_argument("--num-samples", type=_whole(1, MAX_NUM_SAMPLES), default=SCORE_SAMPLES,
                   help="importance samples per row")
    p.add_argument("--seed", type=_whole(0, MAX_SEED), default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_placement(p, saved=True)
    p.set_defaults(handler=cmd_score, parser=p)
    return parser
