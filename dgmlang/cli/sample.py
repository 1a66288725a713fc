"""`dgm sample`: draw new data from a fitted model."""
from __future__ import annotations

import json
import sys

from dgmlang.cli.runs import open_run
from dgmlang.cli.shared import draw_samples, output_paths, to_numpy
from dgmlang.errors import DGMUsageError


def _parse_input(text: str, ir):
    """``NAME=VALUE`` with VALUE a number, a comma-separated vector or a JSON list."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise DGMUsageError(f"--input {text!r}: expected NAME=VALUE", hint="e.g. --input y=3 or --input u=0.5,1,2")
    inputs = ir.names("input")
    if name not in inputs:
        from dgmlang.errors import did_you_mean

        raise DGMUsageError(f"--input {text!r}: the model has no input '{name}'"
                            + (f"; its inputs are {', '.join(inputs)}" if inputs else " (it has no inputs)"),
                            hint=did_you_mean(name, inputs))
    value = value.strip()
    try:
        parsed = json.loads(value) if value.startswith("[") else [json.loads(v) for v in value.split(",")]
    except json.JSONDecodeError:
        raise DGMUsageError(f"--input {text!r}: '{value}' is not a number or a list of numbers") from None
    if not value.startswith("[") and len(parsed) == 1:
        parsed = parsed[0]
    return name, parsed


def cmd_sample(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, write_csv

    outputs = output_paths(args.output)
    model, _, _ = open_run(args.run)
    ir = model.ir
    inputs: dict = {}
    if args.inputs:
        inputs.update(read_data(args.inputs, ir, names=ir.names("input")))
    for item in args.input or ():
        name, value = _parse_input(item, ir)
        inputs[name] = np.asarray(value)
    n = args.n
    if args.inputs:
        rows = len(next(iter(inputs.values()))) if inputs else None
        if n is None:
            n = rows
        elif rows is not None and n != rows:
            raise DGMUsageError(f"-n {n} but {args.inputs} has {rows} rows", hint="leave out -n to draw one per row")
    absent = [name for name in ir.names("input") if name not in inputs]
    if absent:
        raise DGMUsageError(f"the model has the input(s) {', '.join(absent)}: give their values",
                            hint=f"--input {absent[0]}=VALUE for all samples, or --inputs DATA for one row each")
    if n is None:
        raise DGMUsageError("how many samples? give -n N", hint="e.g. dgm sample RUN -n 16 -o samples.png")
    if n < 1:
        raise DGMUsageError(f"-n must be a positive integer, not {n}")
    samples = {k: to_numpy(v) for k, v in model.sample(n, inputs or None, seed=args.seed).items()}
    for name, value in inputs.items():  # one value for all rows is written out row by row
        value, shape = np.asarray(value), ir.variable(name).shape
        samples[name] = np.broadcast_to(value, (n, *shape)) if value.ndim == len(shape) else value
    for out in outputs:
        suffix = out.suffix.lower()
        if suffix == ".npz":
            np.savez(out, **samples)
        elif suffix == ".csv":
            per_row = {k: v for k, v in samples.items() if ir.variable(k).role != "global"}
            write_csv(out, per_row, {k: ir.variable(k).shape for k in per_row})
            left_out = [k for k in samples if k not in per_row]
            if left_out:
                print(f"note: the globals {', '.join(left_out)} are one value per draw, not per row; "
                      "write a .npz to keep them", file=sys.stderr)
        else:
            titles, caption = None, ""
            if len(inputs) == 1 and not ir.variable(next(iter(inputs))).shape:
                name = next(iter(inputs))
                values = np.asarray(samples[name]).tolist()
                if len(set(values)) == 1:
                    caption = f" ({name}={values[0]})"
                else:
                    titles = [f"{name}={v}" for v in values]
            for path in draw_samples(ir, samples, [out], titles=titles, caption=caption):
                print(f"wrote {path}")
            continue
        print(f"wrote {out}")
    return 0
