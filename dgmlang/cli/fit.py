"""`dgm fit`: fit a model to data and write a run folder."""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from dgmlang.cli.runs import (CHECKPOINT, REFERENCE_SCORES, RUN_INFO, THRESHOLD_QUANTILE, clear_run,
                              prepare_run_folder, write_history, write_info, write_reference_scores)
from dgmlang.cli.shared import check_budget, draw_samples, placement, row_values, say, to_numpy
from dgmlang.errors import DGMError, DGMTrainingError, DGMUsageError


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
    """`dgm fit`; with ``--nproc N``, in N processes (see `dgmlang.distributed`), of which
    rank 0 writes the run folder and reports; under torchrun, one of the launched processes."""
    from dgmlang import distributed

    if distributed.launched():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if args.nproc not in (1, local):
            raise DGMUsageError(f"--nproc {args.nproc} under a launcher that started {local} processes here",
                                hint="leave out --nproc when running under torchrun")
    elif args.nproc > 1:
        _check_inputs(args)  # a mistake is reported once, before the processes start
        return distributed.launch("dgmlang.cli", args.argv, args.nproc)
    group = distributed.join_from_environment(device=getattr(args, "device", None))
    try:
        if group is not None and not group.writes_files:
            return _fit_without_files(args)
        return _fit_and_write(args)
    except DGMError:
        if group is not None and group.failed and not group.writes_files:
            return 1  # rank 0 reports the failure, with its message
        raise
    except KeyboardInterrupt:
        if group is not None and not group.writes_files:
            return 130  # rank 0 reports it and saves the model
        raise
    finally:
        distributed.leave()


def _check_inputs(args) -> None:
    """What `_fit_and_write` checks before training: the run folder, the model, the data."""
    from dgmlang.datafiles import read_data, validate
    from dgmlang.frontend import check_source, read_source, select

    placement(args)
    if args.out is not None:
        prepare_run_folder(args.out, overwrite=args.overwrite)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file)), args.model, str(args.file))
    if args.out is None:
        prepare_run_folder(Path("runs") / checked.ir.name, overwrite=args.overwrite)
    check_budget(f"--batch-size {args.batch_size} x --num-particles {args.num_particles}",
                 args.batch_size * args.num_particles * row_values(checked.ir))
    validate(checked.ir, read_data(args.data, checked.ir), str(args.data), purpose="fit", facts=checked.facts)
    if args.validation:
        validate(checked.ir, read_data(args.validation, checked.ir), str(args.validation),
                 purpose="validation", facts=checked.facts)


def _fit_without_files(args) -> int:
    """A process of a multi-process fit other than rank 0: train its share, write nothing."""
    from dgmlang.datafiles import read_data
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    device, dtype = placement(args)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file)), args.model, str(args.file))
    data = read_data(args.data, checked.ir)
    validation = read_data(args.validation, checked.ir) if args.validation else None
    model = compile_checked(checked, source=source, filename=str(args.file), device=device, dtype=dtype)
    model.fit(data, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
              num_particles=args.num_particles, objective=args.objective, validation=validation,
              seed=args.seed, progress=False)
    return 0


def _processes() -> int:
    """How many processes train together (1 outside a process group)."""
    from dgmlang import distributed

    group = distributed.current()
    return 1 if group is None else group.size


def _fit_and_write(args) -> int:
    from dgmlang.datafiles import read_data, validate
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    device, dtype = placement(args)
    if args.out is not None:
        prepare_run_folder(args.out, overwrite=args.overwrite)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file)), args.model, str(args.file))
    ir = checked.ir
    out = args.out or Path("runs") / ir.name
    if args.out is None:
        prepare_run_folder(out, overwrite=args.overwrite)
    check_budget(f"--batch-size {args.batch_size} x --num-particles {args.num_particles}",
                 args.batch_size * args.num_particles * row_values(ir))
    data = read_data(args.data, ir)
    validate(ir, data, str(args.data), purpose="fit", facts=checked.facts)
    validation = None
    if args.validation:
        validation = read_data(args.validation, ir)
        validate(ir, validation, str(args.validation), purpose="validation", facts=checked.facts)
    prepare_run_folder(out, overwrite=args.overwrite)  # again: the folder may have changed meanwhile
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DGMUsageError(f"cannot create the run folder '{out}': {err.strerror or err}") from None

    model = compile_checked(checked, source=source, filename=str(args.file), device=device, dtype=dtype)
    n = len(next(iter(data.values())))
    say(f"fitting {ir.name} to {n} rows of {args.data} -> {out}/", file=sys.stderr)
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
    clear_run(out)  # an earlier run's files (--overwrite) go before the first file of this one
    model.save(out / CHECKPOINT)
    write_history(model, out, n, args.batch_size * _processes())
    info = {"model_file": str(args.file), "model": ir.name, "data": str(args.data), "rows": n,
            "steps": steps_done, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "objective": args.objective, "num_particles": args.num_particles, "seed": args.seed,
            "processes": _processes(), "final_loss": model.history["loss"][-1], "interrupted": interrupted,
            "stopped": None if stopped is None else stopped.message}
    if interrupted or stopped is not None:
        write_info(out, info)
        say(stopped if stopped is not None else
            f"interrupted after step {steps_done}; saved the model as it was then to {out / CHECKPOINT}",
            file=sys.stderr)
        return 130 if interrupted else 1
    _write_samples(model, data, out / "samples.png", seed=args.seed)
    if validation is not None and not args.no_score:
        info["score"] = write_reference_scores(model, validation, out, f"validation data ({args.validation})",
                                               seed=args.seed, quiet=args.quiet)
    elif not args.no_score:
        info["score"] = write_reference_scores(model, data, out, "training data", seed=args.seed, quiet=args.quiet)
    write_info(out, info)
    say(f"final loss {info['final_loss']:.4g} nats per row after {steps_done} steps", file=sys.stderr)
    if "score" in info and info["score"].get("threshold") is not None:
        s = info["score"]
        say(f"log-likelihood of the {s['reference']}: mean {s['mean']:.4g}; outlier threshold (its "
            f"{THRESHOLD_QUANTILE:.0%} quantile) {s['threshold']:.4g}", file=sys.stderr)
    say(f"wrote {out}/: {CHECKPOINT}, loss.csv, loss.png, samples.png"
        + (f", {REFERENCE_SCORES}" if (out / REFERENCE_SCORES).exists() else "") + f", {RUN_INFO}")
    return 0


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
    check_budget("the samples drawn for samples.png", rows * row_values(model.ir))
    draw_samples(model.ir, {k: to_numpy(v) for k, v in samples.items()}, [out], reference=data, titles=titles)
