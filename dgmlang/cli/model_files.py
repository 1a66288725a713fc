"""`dgm check` and `dgm graph`: commands that read a model file and fit nothing."""
from __future__ import annotations

import sys
from pathlib import Path

from dgmlang.cli.shared import check_writable, say, write_atomic
from dgmlang.errors import DGMError


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
                say(f"{path}: {summary(checked.ir)}")
        except DGMError as err:
            say(err, file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_graph(args) -> int:
    from dgmlang.frontend import check_source, read_source, select
    from dgmlang.plots import draw_graphs

    if args.output is not None:
        check_writable(args.output)
    checked = select(check_source(read_source(args.file), str(args.file), guide_order=args.guide_order or "nami"),
                     args.model, str(args.file))
    out = args.output or check_writable(Path(f"{checked.ir.name}.png"))
    with write_atomic(out) as temporary:
        draw_graphs(checked.graph, checked.plan, checked.ir.name, temporary)
    for latent, inputs in checked.plan.as_list():
        say(f"  guide: {latent} <- {inputs if isinstance(inputs, str) else ', '.join(inputs) or '(variational parameters)'}")
    say(f"wrote {out}")
    return 0
