"""The `dgm` command: check, graph, fit, sample, invert, score.

``dgm fit`` writes a *run folder* that the other commands read::

    RUN/model.dgmfit      the fitted model (CompiledModel.save; dgmlang.load_fitted reads it)
    RUN/loss.csv          the loss per step (and the validation loss per epoch)
    RUN/loss.png          the loss curve
    RUN/samples.png       samples from the fitted model (an image grid for image data)
    RUN/reference_scores.csv  the log-likelihood of each validation row (training rows when
                          there is no --validation), for outlier thresholds
    RUN/run.json          how it was fitted, and the default outlier threshold

A user's mistake exits 1 with the rendered DGMError and no traceback; Ctrl-C during `fit`
saves the model as it was after the last completed step and exits 130. docs/cli.md is the
reference.

>>> main(["check", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
SystemExit: 0
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

from dgmlang.errors import DGMError, DGMTrainingError, DGMUsageError

CHECKPOINT = "model.dgmfit"
RUN_INFO = "run.json"
REFERENCE_SCORES = "reference_scores.csv"
#: Importance samples per row for `dgm score` and for the reference scores written by `dgm fit`
#: (the same number for both, so the default threshold compares like with like).
SCORE_SAMPLES = 100
#: The default outlier threshold: this quantile of the reference rows' log-likelihoods.
THRESHOLD_QUANTILE = 0.01
#: At most this many reference rows are scored at fit time (a random subset beyond it).
MAX_SCORED_ROWS = 5000
#: Rows per chunk when scoring or inverting with a progress bar.
CHUNK_ROWS = 64
OUTPUT_FORMATS = (".png", ".npz", ".csv")


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


# ---------------------------------------------------------------- shared helpers


def _outputs(paths: list[Path], allowed: tuple[str, ...] = OUTPUT_FORMATS) -> list[Path]:
    """Check output names before any work is done."""
    for path in paths:
        if path.suffix.lower() not in allowed:
            raise DGMUsageError(f"cannot write '{path}': unknown output format '{path.suffix or path.name}'",
                                hint="use " + ", ".join(allowed))
        if path.parent and not path.parent.exists():
            raise DGMUsageError(f"cannot write '{path}': the folder {path.parent} does not exist")
    return paths


def _open_run(run: Path):
    """The fitted model of a run folder (or a .dgmfit file) and the run's info dict."""
    from dgmlang.infer import load_fitted

    run = Path(run)
    if run.is_dir():
        checkpoint = run / CHECKPOINT
        if not checkpoint.is_file():
            raise DGMUsageError(f"{run} holds no fitted model ({CHECKPOINT})",
                                hint="create one with: dgm fit MODEL.dgm --data DATA --out " + str(run))
        info_path = run / RUN_INFO
        try:
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DGMUsageError(f"{info_path} is not readable JSON",
                                hint="delete it (the default outlier threshold is then unknown) or fit again") from None
        return load_fitted(checkpoint), run, info
    if not run.exists():
        raise DGMUsageError(f"no run folder or checkpoint at {run}",
                            hint="give the folder written by dgm fit (--out), or its model.dgmfit")
    with run.open("rb") as file:
        is_archive = file.read(4) == b"PK\x03\x04"  # torch.save's zip format
    if not is_archive:
        raise DGMUsageError(f"{run} is not a dgmlang checkpoint",
                            hint="give the run folder written by dgm fit (--out), or its model.dgmfit")
    return load_fitted(run), None, {}


def _value_range(ir, name: str) -> tuple[float | None, float | None]:
    """Bounds of a data variable's support (for a fixed grey scale), None where unbounded or
    where the bound depends on other variables."""
    from dgmlang.data import support_of

    constraint = support_of(ir, ir.variable(name)).constraint

    def bound(attribute: str) -> float | None:
        value = getattr(constraint, attribute, None)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "numel") and value.numel() == 1:
            return float(value)
        return None

    return bound("lower_bound"), bound("upper_bound")


def _numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=quiet or total <= CHUNK_ROWS)


def _scores(model, arrays: dict, *, num_samples: int, seed: int | None, quiet: bool, desc: str):
    """log p(row) for every row, chunk by chunk under one progress bar."""
    import numpy as np
    import torch

    n = len(next(iter(arrays.values())))
    out = []
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with _progress(n, desc, quiet) as bar:
            for start in range(0, n, CHUNK_ROWS):
                chunk = {k: v[start:start + CHUNK_ROWS] for k, v in arrays.items()}
                out.append(_numpy(model.log_prob(chunk, num_samples=num_samples)))
                bar.update(len(out[-1]))
    finally:
        torch.random.set_rng_state(generator_state)
    return np.concatenate(out)


# ---------------------------------------------------------------- fit


@contextmanager
def interrupts_between_steps():
    """Hold a Ctrl-C that arrives during an optimizer step until the step is done, so an
    interrupted `fit` leaves every parameter as it was after one whole step (torch's global
    optimizer hooks mark the step; outside a step Ctrl-C interrupts at once)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"in_step": False, "pending": False}

    def on_interrupt(signum, frame):
        if state["in_step"]:
            state["pending"] = True
        else:
            raise KeyboardInterrupt

    def before(optimizer, args, kwargs):
        state["in_step"] = True

    def after(optimizer, args, kwargs):
        state["in_step"] = False
        if state["pending"]:
            state["pending"] = False
            raise KeyboardInterrupt

    handles = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for handle in handles:
            handle.remove()


def cmd_fit(args) -> int:
    from dgmlang.datafiles import read_data, validate
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    source = read_source(args.file)
    checked = select(check_source(source, str(args.file)), args.model, str(args.file))
    ir = checked.ir
    if args.epochs is not None and args.steps is not None:
        raise DGMUsageError("give --epochs or --steps, not both")
    data = read_data(args.data, ir)
    validate(ir, data, str(args.data), purpose="fit")
    validation = None
    if args.validation:
        validation = read_data(args.validation, ir)
        validate(ir, validation, str(args.validation), purpose="validation")
    out = args.out or Path("runs") / ir.name
    if out.exists() and not out.is_dir():
        raise DGMUsageError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)

    model = compile_checked(checked, source=source, filename=str(args.file))
    n = len(next(iter(data.values())))
    print(f"fitting {ir.name} to {n} rows of {args.data} -> {out}/", file=sys.stderr)
    stopped: DGMTrainingError | None = None
    interrupted = False
    try:
        with interrupts_between_steps():
            model.fit(data, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      num_particles=args.num_particles, objective=args.objective, validation=validation,
                      seed=args.seed, progress=not args.quiet)
    except KeyboardInterrupt:
        interrupted = True
    except DGMTrainingError as err:
        stopped = err
    steps_done = len(model.history["loss"])
    if not model.fitted:
        if interrupted:
            print("interrupted before the first step; nothing saved", file=sys.stderr)
            return 130
        raise stopped  # type: ignore[misc]
    model.save(out / CHECKPOINT)
    _write_history(model, out, n, args.batch_size)
    info = {"model_file": str(args.file), "model": ir.name, "data": str(args.data), "rows": n,
            "steps": steps_done, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "objective": args.objective, "num_particles": args.num_particles, "seed": args.seed,
            "final_loss": model.history["loss"][-1], "interrupted": interrupted,
            "stopped": None if stopped is None else stopped.message}
    if interrupted or stopped is not None:
        (out / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
        print(stopped if stopped is not None else
              f"interrupted after step {steps_done}; saved the model as it was then to {out / CHECKPOINT}",
              file=sys.stderr)
        return 130 if interrupted else 1
    _write_samples(model, data, out / "samples.png", seed=args.seed)
    if args.no_score:
        (out / REFERENCE_SCORES).unlink(missing_ok=True)  # a previous run's scores would not match
    elif validation is not None:
        info["score"] = _reference_scores(model, validation, out, f"validation data ({args.validation})",
                                          seed=args.seed, quiet=args.quiet)
    else:
        info["score"] = _reference_scores(model, data, out, "training data", seed=args.seed, quiet=args.quiet)
    (out / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(f"final loss {info['final_loss']:.4g} nats per row after {steps_done} steps", file=sys.stderr)
    if "score" in info and info["score"].get("threshold") is not None:
        s = info["score"]
        print(f"log-likelihood of the {s['reference']}: mean {s['mean']:.4g}; outlier threshold (its "
              f"{THRESHOLD_QUANTILE:.0%} quantile) {s['threshold']:.4g}", file=sys.stderr)
    print(f"wrote {out}/: {CHECKPOINT}, loss.csv, loss.png, samples.png"
          + (f", {REFERENCE_SCORES}" if (out / REFERENCE_SCORES).exists() else "") + f", {RUN_INFO}")
    return 0


def _write_history(model, out: Path, n: int, batch_size: int) -> None:
    from dgmlang.plots import loss_curve

    losses = model.history["loss"]
    validation = model.history.get("validation") or []
    steps_per_epoch = math.ceil(n / min(batch_size, n))
    with (out / "loss.csv").open("w") as file:
        file.write("step,loss" + (",validation_loss" if validation else "") + "\n")
        for step, loss in enumerate(losses, start=1):
            row = f"{step},{loss:.6g}"
            if validation:
                epoch, rest = divmod(step, steps_per_epoch)
                row += f",{validation[epoch - 1]:.6g}" if rest == 0 and 0 < epoch <= len(validation) else ","
            file.write(row + "\n")
    loss_curve(losses, out / "loss.png", validation=validation or None, steps_per_epoch=steps_per_epoch)


def _write_samples(model, data: dict, out: Path, *, seed: int | None) -> None:
    """A picture of draws from the fitted model, next to the training data where it helps."""
    count = 40
    inputs = {name: data[name][:count] for name in model.ir.names("input")}
    rows = len(next(iter(inputs.values()))) if inputs else count
    samples = model.sample(rows, inputs or None, seed=seed)
    titles = None
    if len(inputs) == 1 and not model.ir.variable(next(iter(inputs))).shape:
        name = next(iter(inputs))
        titles = [f"{name}={v}" for v in inputs[name].tolist()]
    _draw_samples(model.ir, {k: _numpy(v) for k, v in samples.items()}, [out], reference=data, titles=titles)


def _reference_scores(model, data: dict, out: Path, reference: str, *, seed: int | None, quiet: bool) -> dict:
    """Score (a subset of) the reference rows; their low quantile is the default threshold.
    Held-out rows are the better reference: a flexible model scores its training rows higher
    than new data like them, so a training quantile flags more than its share of new data."""
    import numpy as np

    from dgmlang.datafiles import write_csv

    n = len(next(iter(data.values())))
    rows = np.arange(n)
    if n > MAX_SCORED_ROWS:
        rows = np.sort(np.random.default_rng(0 if seed is None else seed).choice(n, MAX_SCORED_ROWS, replace=False))
    try:
        scores = _scores(model, {k: v[rows] for k, v in data.items()}, num_samples=SCORE_SAMPLES, seed=seed,
                         quiet=quiet, desc=f"score {reference.split(' (')[0]}")
    except DGMUsageError as err:  # a model log_prob cannot serve (a discrete global)
        return {"threshold": None, "why_none": err.message}
    write_csv(out / REFERENCE_SCORES, {"row": rows, "log_prob": scores}, {"row": (), "log_prob": ()})
    finite = scores[np.isfinite(scores)]
    return {"reference": reference, "num_samples": SCORE_SAMPLES, "rows_scored": int(len(rows)),
            "mean": float(finite.mean()),
            "threshold_quantile": THRESHOLD_QUANTILE,
            "threshold": float(np.quantile(finite, THRESHOLD_QUANTILE))}


# ---------------------------------------------------------------- sample


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

    outputs = _outputs(args.output)
    model, _, _ = _open_run(args.run)
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
    samples = {k: _numpy(v) for k, v in model.sample(n, inputs or None, seed=args.seed).items()}
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
            for path in _draw_samples(ir, samples, [out], titles=titles, caption=caption):
                print(f"wrote {path}")
            continue
        print(f"wrote {out}")
    return 0


def _per_variable(out: Path, names: list[str]) -> list[Path]:
    """One file per variable: `out` itself for one, OUT-NAME.png for several."""
    if len(names) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{name}{out.suffix}") for name in names]


def _draw_samples(ir, samples: dict, outs: list[Path], *, reference: dict | None = None,
                  titles: list[str] | None = None, caption: str = "") -> list[Path]:
    """Image grids for image-shaped data variables, scatter plots for the others."""
    from dgmlang.plots import image_grid, image_shape, scatter_samples

    names = ir.names("data")
    written = []
    for name, path in zip(names, _per_variable(outs[0], names)):
        values = samples[name]
        shape = image_shape(ir.variable(name).shape)
        if shape is not None:
            low, high = _value_range(ir, name)
            image_grid(values[:100], path, shape=shape, vmin=low if low is not None else None, vmax=high,
                       titles=titles[:100] if titles else None, title=f"samples of {name}{caption}")
        else:
            scatter_samples(values, path, name=name, reference=None if reference is None else reference.get(name))
        written.append(path)
    return written


# ---------------------------------------------------------------- invert


def cmd_invert(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, read_mask, split_missing, validate, write_csv

    outputs = _outputs(args.output)
    model, _, _ = _open_run(args.run)
    ir = model.ir
    data_names = ir.names("data")
    arrays = read_data(args.data, ir, optional=data_names, allow_missing=True)
    values, masks = split_missing(ir, arrays)
    if args.mask:
        given = read_mask(args.mask, ir, {k: values[k].shape for k in data_names if k in values})
        for name, mask in given.items():
            masks[name] = mask & masks[name] if name in masks else mask
    validate(ir, values, str(args.data), purpose="invert", allow_missing=True, mask=masks or None)
    truth = None
    if args.truth:
        truth = read_data(args.truth, ir, names=data_names)
        n_truth, n_data = len(next(iter(truth.values()))), len(next(iter(values.values())))
        if n_truth != n_data:
            raise DGMUsageError(f"--truth {args.truth} has {n_truth} rows but --data has {n_data}")

    n = len(next(iter(values.values())))
    observed = {}
    for name in data_names:
        var = ir.variable(name)
        if name not in values:
            observed[name] = np.zeros((n, *var.shape), dtype=bool)
            continue
        ok = ~np.isnan(values[name]) if values[name].dtype.kind == "f" else np.ones(values[name].shape, dtype=bool)
        observed[name] = ok & masks[name] if name in masks else ok
    samples = _invert_chunks(model, values, masks, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet)

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
        print(line)

    for out in outputs:
        suffix = out.suffix.lower()
        if suffix == ".npz":
            extra = {f"{k}:samples": v for k, v in samples.items()} if args.keep_samples else {}
            np.savez(out, **summary, **extra)
        elif suffix == ".csv":
            per_row = {k: v for k, v in summary.items()
                       if ir.variable(k.split(":")[0]).role != "global" and not k.endswith(":observed")}
            write_csv(out, per_row, {k: ir.variable(k.split(":")[0]).shape for k in per_row})
        else:
            for path in _draw_completions(ir, values, observed, summary, truth, out):
                print(f"wrote {path}")
            continue
        print(f"wrote {out}")
    return 0


def _invert_chunks(model, values: dict, masks: dict, *, num_samples: int, seed: int | None, quiet: bool) -> dict:
    """`model.invert` over chunks of rows under one progress bar (in one call when the model
    has globals, so all rows share the same posterior draws of them)."""
    import numpy as np
    import torch

    n = len(next(iter(values.values())))
    step = n if model.ir.names("global") else CHUNK_ROWS
    pieces: list[dict] = []
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with _progress(n, "invert", quiet) as bar:
            for start in range(0, n, step):
                chunk = {k: v[start:start + step] for k, v in values.items()}
                chunk_mask = {k: v[start:start + step] for k, v in masks.items()} or None
                result = model.invert(chunk, mask=chunk_mask, num_samples=num_samples)
                pieces.append({k: _numpy(v) for k, v in result.items()})
                bar.update(len(next(iter(chunk.values()))))
    finally:
        torch.random.set_rng_state(state)
    globals_ = set(model.ir.names("global"))
    return {k: pieces[0][k] if k in globals_ else np.concatenate([p[k] for p in pieces], axis=1)
            for k in pieces[0]}


def _draw_completions(ir, values, observed, summary, truth, out: Path) -> list[Path]:
    from dgmlang.plots import completion_grid, completion_vectors, image_shape

    names = ir.names("data")
    written = []
    for name, path in zip(names, _per_variable(out, names)):
        var = ir.variable(name)
        n = len(summary[f"{name}:mean"])
        given = values.get(name)
        shown = (given.astype(float) if given is not None else summary[f"{name}:mean"] * float("nan"))
        shape = image_shape(var.shape)
        if shape is not None:
            low, high = _value_range(ir, name)
            completion_grid(shown, summary[f"{name}:mean"], path, shape=shape, mask=observed[name],
                            truth=None if truth is None else truth[name], vmin=low or 0, vmax=high,
                            title=f"{name}: observed (missing in red), completed (posterior mean)"
                                  + (", truth" if truth is not None else ""))
        else:
            completion_vectors(shown.reshape(n, -1), summary[f"{name}:mean"].reshape(n, -1),
                               summary[f"{name}:std"].reshape(n, -1), path,
                               mask=observed[name].reshape(n, -1), name=name,
                               truth=None if truth is None else truth[name].reshape(n, -1))
        written.append(path)
    return written


# ---------------------------------------------------------------- score


def _threshold(text: str | None, run: Path | None, info: dict) -> tuple[float | None, str]:
    """The outlier threshold and where it came from: a number, ``P%`` (that quantile of the
    reference scores written by dgm fit), or the run's default."""
    import numpy as np

    if text is None:
        score = info.get("score") or {}
        if score.get("threshold") is None:
            return None, "no threshold (give --threshold; the run stored none)"
        reference = score.get("reference", "training data").split(" (")[0]
        return score["threshold"], (f"the {score['threshold_quantile']:.0%} quantile of the log-likelihoods "
                                    f"of the {reference}, stored by dgm fit")
    text = text.strip()
    if text.endswith("%"):
        try:
            q = float(text[:-1]) / 100
        except ValueError:
            q = -1.0
        if not 0 <= q <= 1:
            raise DGMUsageError(f"--threshold {text}: expected a percentage between 0% and 100%")
        path = run / REFERENCE_SCORES if run is not None else None
        if path is None or not path.is_file():
            raise DGMUsageError(f"--threshold {text} needs the reference scores that dgm fit writes ({REFERENCE_SCORES})",
                                hint="give the run folder, or a number as the threshold")
        scores = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1]
        reference = info.get("score", {}).get("reference", "training data").split(" (")[0]
        return float(np.quantile(scores[np.isfinite(scores)], q)), f"the {text} quantile of the {reference}'s log-likelihoods"
    try:
        return float(text), "given"
    except ValueError:
        raise DGMUsageError(f"--threshold {text!r}: expected a number (a log-likelihood) or a percentage like 1%") from None


def cmd_score(args) -> int:
    import numpy as np

    from dgmlang.datafiles import read_data, validate, write_csv

    outputs = _outputs(args.output, (".csv", ".npz"))
    model, run, info = _open_run(args.run)
    threshold, origin = _threshold(args.threshold, run, info)
    ir = model.ir
    data = read_data(args.data, ir)
    validate(ir, data, str(args.data), purpose="log_prob")
    scores = _scores(model, data, num_samples=args.num_samples, seed=args.seed, quiet=args.quiet, desc="score")
    columns = {"row": np.arange(len(scores)), "log_prob": scores}
    if threshold is not None:
        columns["outlier"] = (scores < threshold).astype(int)
    for out in outputs:
        if out.suffix.lower() == ".csv":
            write_csv(out, columns, {k: () for k in columns})
        else:
            np.savez(out, **columns)
        print(f"wrote {out}")
    print(f"{len(scores)} rows: mean log-likelihood {scores.mean():.4g}, lowest {scores.min():.4g}")
    if threshold is None:
        print(f"outliers: {origin}")
    else:
        print(f"outliers: {int(columns['outlier'].sum())} rows below {threshold:.4g} ({origin})")
    return 0


# ---------------------------------------------------------------- the parser


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except DGMError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
