"""`dgm invert`: posterior inference for (partial) rows, and completions of missing entries."""
from __future__ import annotations

from pathlib import Path

from dgmlang.cli.runs import open_run_on
from dgmlang.cli.shared import (CHUNK_ROWS, check_budget, one_warning, output_paths, per_variable_paths, progress_bar,
                                row_values, say, to_numpy, value_range, write_atomic)
from dgmlang.errors import DGMDataError, DGMUsageError


def cmd_invert(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, read_mask, split_missing, validate, write_csv

    outputs = output_paths(args.output)
    model, _, _ = open_run_on(args)
    ir = model.ir
    data_names = ir.names("data")
    for out in outputs:
        if out.suffix.lower() == ".png":
            output_paths(per_variable_paths(out, data_names))
    arrays = read_data(args.data, ir, optional=data_names, allow_missing=True)
    values, masks = split_missing(ir, arrays)
    if not values:  # a model without inputs, and a file holding none of its data variables
        raise DGMDataError(f"{args.data} holds none of the model's data variables ({', '.join(data_names)})",
                           hint="invert needs at least one of them, even if it is missing everywhere (NaN)")
    if args.mask:
        given = read_mask(args.mask, ir, {k: values[k].shape for k in data_names if k in values})
        for name, mask in given.items():
            masks[name] = mask & masks[name] if name in masks else mask
    validate(ir, values, str(args.data), purpose="invert", allow_missing=True, mask=masks or None,
             facts=model.facts, dtype=model.model.dtype)
    truth = None
    if args.truth:
        truth = read_data(args.truth, ir, names=data_names,
                          missing_hint="--truth is the complete data, to compare the completions with: "
                                       "give every value")
        n_truth, n_data = len(next(iter(truth.values()))), len(next(iter(values.values())))
        if n_truth != n_data:
            raise DGMUsageError(f"--truth {args.truth} has {n_truth} rows but --data has {n_data}")

    n = len(next(iter(values.values())))
    rows_at_once = n if ir.names("global") else min(n, CHUNK_ROWS)
    check_budget(f"--num-samples {args.num_samples} for {rows_at_once} rows at a time",
                 rows_at_once * args.num_samples * row_values(ir, ("data", "latent", "global")))
    observed = {}
    for name in data_names:
        var = ir.variable(name)
        if name not in values:
            observed[name] = np.zeros((n, *var.shape), dtype=bool)
            continue
        ok = ~np.isnan(values[name]) if values[name].dtype.kind == "f" else np.ones(values[name].shape, dtype=bool)
        observed[name] = ok & masks[name] if name in masks else ok
    samples = _invert_chunks(model, values, masks, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet,
                             method=args.method, refine=args.refine)

    summary = {}
    for name in ir.names("latent", "global") + data_names:
        draws = samples[name].astype(float)
        summary[f"{name}:mean"] = draws.mean(0)
        summary[f"{name}:std"] = draws.std(0)
    for name in data_names:
        summary[f"{name}:observed"] = observed[name]

    for name in data_names:
        missing = int((~observed[name]).sum())
        line = f"{name}: {missing} of {observed[name].size} entries missing"
        if truth is not None and missing:
            error = summary[f"{name}:mean"][~observed[name]] - truth[name][~observed[name]]
            line += f"; posterior-mean completion RMSE on them {np.sqrt(np.mean(error ** 2)):.4g}"
        say(line)

    for out in outputs:
        suffix = out.suffix.lower()
        if suffix == ".npz":
            extra = {f"{k}:samples": v for k, v in samples.items()} if args.keep_samples else {}
            with write_atomic(out) as temporary:
                np.savez(temporary, **summary, **extra)
        elif suffix == ".csv":
            per_row = {k: v for k, v in summary.items()
                       if ir.variable(k.split(":")[0]).role != "global" and not k.endswith(":observed")}
            with write_atomic(out) as temporary:
                write_csv(temporary, per_row, {k: ir.variable(k.split(":")[0]).shape for k in per_row})
        else:
            for path in _draw_completions(ir, values, observed, summary, truth, out):
                say(f"wrote {path}")
            continue
        say(f"wrote {out}")
    return 0


def _invert_chunks(model, values: dict, masks: dict, *, num_samples: int, seed: int | None, quiet: bool,
                   method: str, refine: int) -> dict:
    """`model.invert` over chunks of rows under one progress bar (in one call when the model
    has globals, so all rows share the same posterior draws of them)."""
    import numpy as np

    from dgmlang.nets import seeded

    n = len(next(iter(values.values())))
    step = n if model.ir.names("global") else CHUNK_ROWS
    pieces: list[dict] = []
    with seeded(seed), progress_bar(n, "invert", quiet) as bar, one_warning(-(-n // step)):
        for start in range(0, n, step):
            chunk = {k: v[start:start + step] for k, v in values.items()}
            chunk_mask = {k: v[start:start + step] for k, v in masks.items()} or None
            result = model.invert(chunk, mask=chunk_mask, num_samples=num_samples, progress=False, method=method,
                                  refine=refine)
            pieces.append({k: to_numpy(v) for k, v in result.items()})
            bar.update(len(next(iter(chunk.values()))))
    globals_ = set(model.ir.names("global"))
    return {k: pieces[0][k] if k in globals_ else np.concatenate([p[k] for p in pieces], axis=1)
            for k in pieces[0]}


def _draw_completions(ir, values, observed, summary, truth, out: Path) -> list[Path]:
    from dgmlang.plots import completion_grid, completion_vectors, image_shape

    names = ir.names("data")
    written = []
    for name, path in zip(names, per_variable_paths(out, names)):
        var = ir.variable(name)
        n = len(summary[f"{name}:mean"])
        given = values.get(name)
        shown = (given.astype(float) if given is not None else summary[f"{name}:mean"] * float("nan"))
        shape = image_shape(var.shape)
        with write_atomic(path) as temporary:
            if shape is not None:
                low, high = value_range(ir, name)
                completion_grid(shown, summary[f"{name}:mean"], temporary, shape=shape, mask=observed[name],
                                truth=None if truth is None else truth[name], vmin=low or 0, vmax=high,
                                title=f"{name}: observed (missing in red), completed (posterior mean)"
                                      + (", truth" if truth is not None else ""))
            else:
                completion_vectors(shown.reshape(n, -1), summary[f"{name}:mean"].reshape(n, -1),
                                   summary[f"{name}:std"].reshape(n, -1), temporary,
                                   mask=observed[name].reshape(n, -1), name=name,
                                   truth=None if truth is None else truth[name].reshape(n, -1))
        written.append(path)
    return written
