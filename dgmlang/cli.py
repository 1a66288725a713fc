"""The `dgm` command: check, graph (and, with a compiled model, fit, sample, invert, score).

A user's mistake exits 1 with the rendered DGMError and no traceback.

>>> main(["check", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
SystemExit: 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dgmlang.errors import DGMError, DGMUsageError


def _fmt_shape(shape) -> str:
    return f"[{', '.join(map(str, shape))}]" if shape else ""


def summary(ir) -> str:
    """One line describing a checked model: its latents, data, inputs, params and nets."""
    def names(*roles):
        items = [f"{v.name}{_fmt_shape(v.shape)}" for v in ir.variables if v.role in roles]
        return ", ".join(items) if items else "-"

    nets = ", ".join(
        f"{n.name}({'+'.join(map(str, n.input_sizes))}->{'-'.join(map(str, n.hidden)) + '->' if n.hidden else ''}{n.output_size})"
        for n in ir.nets
    ) or "-"
    return (f"model {ir.name}: latents {names('latent')}; globals {names('global')}; data {names('data')}; "
            f"inputs {names('input')}; params {names('param')}; nets {nets}")


def cmd_check(args) -> int:
    from dgmlang.frontend import check_source, read_source

    failed = False
    for path in args.files:
        try:
            for checked in check_source(read_source(path), str(path)):
                print(f"{path}: {summary(checked.ir)}")
        except DGMError as err:
            print(err, file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_graph(args) -> int:
    from dgmlang.frontend import check_source, read_source, select
    from dgmlang.plots import draw_graphs

    checked = select(check_source(read_source(args.file), str(args.file)), args.model, str(args.file))
    out = args.output or Path(f"{checked.ir.name}.png")
    draw_graphs(checked.graph, checked.plan, checked.ir.name, out)
    for latent, inputs in checked.plan.as_list():
        print(f"  guide: {latent} <- {inputs if isinstance(inputs, str) else ', '.join(inputs) or '(variational parameters)'}")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgm", description="Check, draw, fit, sample, invert and score dgm models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="check model files and print one line per model",
                       description="Parse and check .dgm files; print each model's variables and networks.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("graph", help="draw a model's graph and its derived guide",
                       description="Write the model graph and the derived guide graph side by side (.dot, .png or .svg).")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--model", help="which model of the file (needed when it holds several)")
    p.add_argument("-o", "--output", type=Path, help="output file: .dot, .png or .svg (default MODEL.png)")
    p.set_defaults(run=cmd_graph)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except DGMError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
