"""`dgm sample`: draw new data from a fitted model."""
from __future__ import annotations

import sys

from dgmlang.cli.runs import open_run_on
from dgmlang.cli.shared import (check_budget, draw_samples, output_paths, per_variable_paths, row_values, say,
                                to_numpy, write_atomic)
from dgmlang.errors import DGMUsageError


def _input_value(item: tuple[str, object], ir):
    """The value of ``--input NAME=VALUE`` (parsed by the argument parser) for the model's
    input NAME, shaped like it (a flat list fills an array row-major)."""
    import math

    import numpy as np

    name, parsed = item
    inputs = ir.names("input")
    if name not in inputs:
        from dgmlang.errors import did_you_mean

        raise DGMUsageError(f"--input '{name}=...': the model has no input '{name}'"
                            + (f"; its inputs are {', '.join(inputs)}" if inputs else " (it has no inputs)"),
                            hint=did_you_mean(name, inputs))
    shape = tuple(ir.variable(name).shape)
    try:
        value = np.asarray(parsed)
    except ValueError:  # ragged lists
        raise DGMUsageError(f"--input {name}: the nested lists have different lengths") from None
    if value.dtype == object or value.dtype.kind not in "iuf":
        raise DGMUsageError(f"--input {name}: expected numbers")
    if value.shape != shape:
        if value.size != math.prod(shape):
            raise DGMUsageError(f"--input {name}: {name} holds {math.prod(shape)} number(s)"
                                f"{' (shape ' + str(list(shape)) + ')' if shape else ''}, but {value.size} were given",
                                hint="one value for every sample; --inputs DATA gives one row per sample")
        value = value.reshape(shape)
    return name, value


def cmd_sample(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, validate_inputs, write_csv

    outputs = output_paths(args.output)
    model, _, _ = open_run_on(args)
    ir = model.ir
    for out in outputs:
        if out.suffix.lower() == ".png":
            output_paths(per_variable_paths(out, ir.names("data")))
    given = dict(_input_value(item, ir) for item in args.input or ())
    if args.n is not None:
        check_budget(f"-n {args.n}", args.n * row_values(ir))
    inputs: dict = {}
    if args.inputs:
        inputs.update(read_data(args.inputs, ir, names=ir.names("input")))
    rows = len(next(iter(inputs.values()))) if inputs else None
    inputs.update(given)
    n = args.n
    if args.inputs:
        if n is None:
            n = rows
        elif rows is not None and n != rows:
            raise DGMUsageError(f"-n {n} but {args.inputs} has {rows} rows", hint="leave out -n to draw one per row")
    absent = [name for name in ir.names("input") if name not in inputs]
    if absent:
        raise DGMUsageError(f"the model has the input(s) {', '.join(absent)}: give their values",
                            hint=f"--input {absent[0]}=VALUE for all samples, or --inputs DATA for one row each")
    if n is None:
        raise DGMUsageError(f"how many samples? {args.inputs} gives no rows (the model has no inputs)",
                            hint="give -n N")
    check_budget(f"{n} samples", n * row_values(ir))
    if args.inputs and not given:  # checked with the file named (--input values: by sample)
        validate_inputs(ir, inputs, str(args.inputs), n, facts=model.facts, dtype=model.model.dtype)
    samples = {k: to_numpy(v) for k, v in model.sample(n, inputs or None, seed=args.seed).items()}
    for name, value in inputs.items():  # one value for all rows is written out row by row
        value, shape = np.asarray(value), ir.variable(name).shape
        samples[name] = np.broadcast_to(value, (n, *shape)) if value.ndim == len(shape) else value
    for out in outputs:
        suffix = out.suffix.lower()
        if suffix == ".npz":
            with write_atomic(out) as temporary:
                np.savez(temporary, **samples)
        elif suffix == ".csv":
            per_row = {k: v for k, v in samples.items() if ir.variable(k).role != "global"}
            with write_atomic(out) as temporary:
                write_csv(temporary, per_row, {k: ir.variable(k).shape for k in per_row})
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
                say(f"wrote {path}")
            continue
        say(f"wrote {out}")
    return 0
