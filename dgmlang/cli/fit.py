"""`dgm fit`: fit a model to data and write a run folder; `dgm fit --resume RUN` continues one.

The run folder's checkpoint (model.dgmfit) is written every --checkpoint-every steps, every
--checkpoint-seconds seconds (60) and at the end, atomically; run.json is written when the
run starts (what `--resume` needs to continue it) and again when it ends. SIGINT (Ctrl-C)
and SIGTERM stop training after the step in progress, write the checkpoint and exit 130 and
143; a second signal stops at once, keeping the last checkpoint.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from dgmlang.cli.runs import (CHECKPOINT, REFERENCE_SCORES, RUN_INFO, THRESHOLD_QUANTILE, clear_run,
                              prepare_run_folder, write_history, write_info, write_reference_scores)
from dgmlang.cli.shared import check_budget, draw_samples, row_values, say, to_numpy
from dgmlang.errors import DGMTrainingError, DGMUsageError

#: `dgm fit`'s settings when not given (the Python defaults, and seed 0).
FIT_DEFAULTS = {"batch_size": 128, "lr": 1e-3, "objective": "elbo", "num_particles": 1, "seed": 0}
#: The exit status after a signal stopped training: 128 + the signal's number.
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextmanager
def stop_on_signals():
    """While the block runs, SIGINT and SIGTERM ask training to stop after the step in
    progress (`fit`'s `should_stop`; the signals received are listed in the yielded list);
    a second one raises KeyboardInterrupt at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {number: signal.signal(number, on_signal) for number in EXIT_STATUS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def cmd_fit(args) -> int:
    if args.resume is not None:
        return _resume(args)
    from dgmlang.datafiles import read_data, validate
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    settings = {key: default if getattr(args, key) is None else getattr(args, key)
                for key, default in FIT_DEFAULTS.items()}
    if args.out is not None:
        prepare_run_folder(args.out, overwrite=args.overwrite)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file)), args.model, str(args.file))
    ir = checked.ir
    out = args.out or Path("runs") / ir.name
    if args.out is None:
        prepare_run_folder(out, overwrite=args.overwrite)
    check_budget(f"--batch-size {settings['batch_size']} x --num-particles {settings['num_particles']}",
                 settings["batch_size"] * settings["num_particles"] * row_values(ir))
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

    model = compile_checked(checked, source=source, filename=str(args.file))
    clear_run(out)  # an earlier run's files (--overwrite) go before the first file of this one
    info = {"model_file": str(args.file), "model": ir.name, "data": str(args.data),
            "validation": args.validation, "rows": len(next(iter(data.values()))), "steps": 0,
            "epochs": args.epochs, **settings, "threads": args.threads, "no_score": args.no_score,
            "status": "running"}
    return _train(model, data, validation, out, info, args, resume=False,
                  length={"epochs": args.epochs, "steps": args.steps})


def _resume(args) -> int:
    """`dgm fit --resume RUN`: continue the run from its checkpoint, with its own settings,
    model text and data (run.json says where they are; a FILE, --data or --validation given
    must match)."""
    from dgmlang.datafiles import read_data, validate
    from dgmlang.frontend import load_fitted, read_source

    run = Path(args.resume)
    if not run.is_dir():
        raise DGMUsageError(f"--resume {run}: no run folder there",
                            hint="give the folder dgm fit wrote (its --out)")
    saved = run / CHECKPOINT
    if not saved.is_file():
        raise DGMUsageError(
            f"cannot resume {run}: it holds no checkpoint ({CHECKPOINT})",
            hint="the run stopped before its first checkpoint (written every --checkpoint-seconds, "
                 "60 by default, or every --checkpoint-every steps); fit it again with --overwrite")
    info = _run_info(run)
    model = load_fitted(saved)
    for leftover in run.glob(f".{CHECKPOINT}.*.tmp"):  # a write cut short by kill -9
        leftover.unlink(missing_ok=True)
    state = model.training_state
    if state is None:
        raise DGMUsageError(f"cannot resume {run}: its checkpoint holds no training state (it was "
                            "written by a dgmlang before resuming existed)",
                            hint="fit it again with --overwrite")
    if state.finished:
        raise DGMUsageError(f"the run in {run} is finished ({state.steps_done} of {state.planned_steps} "
                            "steps); there is nothing to resume",
                            hint="start another run: dgm fit MODEL.dgm --data DATA --out NEW_RUN")
    _check_same_settings(args, run, model, info)
    model_file = Path(args.file) if args.file is not None else Path(info["model_file"])
    if args.file is not None or model_file.is_file():
        if read_source(model_file) != model.source:
            raise DGMUsageError(
                f"cannot resume {run}: the model text in {model_file} differs from the text the run "
                f"was fitted with (saved in {saved})",
                hint="put the model file back as it was, or fit the new text with --overwrite")
    data_spec = args.data if args.data is not None else info["data"]
    data = read_data(data_spec, model.ir)
    validate(model.ir, data, str(data_spec), purpose="fit", facts=model.facts)
    validation = None
    if args.validation is not None:
        info["validation"] = args.validation
    if info.get("validation"):
        validation = read_data(info["validation"], model.ir)
        validate(model.ir, validation, str(info["validation"]), purpose="validation", facts=model.facts)
    info.setdefault("no_score", False)
    info.setdefault("validation", None)
    info["seed"] = state.settings["seed"] if state.settings["seed"] is not None else FIT_DEFAULTS["seed"]
    # run.json is rewritten when the resumed run stops or ends (not before: a refusal in fit,
    # other data say, leaves it as it was)
    info.update(data=str(data_spec), status="running", resumed_at=state.steps_done,
                **{key: value for key, value in (("threads", args.threads), ("no_score", args.no_score or None))
                   if value is not None})
    return _train(model, data, validation, run, info, args, resume=True, length={})


def _check_same_settings(args, run: Path, model, info: dict) -> None:
    """The options that set a run (given again with `--resume`, as in the command that started
    it) must agree with the run's; none can change it."""
    state = model.training_state
    stored = {**{key: state.settings[key] for key in FIT_DEFAULTS}, "model": model.name,
              "steps": state.planned_steps if info.get("epochs") is None else None,
              "epochs": info.get("epochs")}
    for key, value in stored.items():
        given = getattr(args, key)
        if given is not None and given != value:
            option = f"--{key.replace('_', '-')}"
            raise DGMUsageError(f"cannot resume {run} with {option} {given}: the run's is {value}",
                                hint=f"--resume continues the run with its own settings: leave out {option}, "
                                     "or start a new run with --out")
    if args.out is not None and Path(args.out).resolve() != run.resolve():
        raise DGMUsageError(f"--resume {run} continues that run in its own folder, not in --out {args.out}",
                            hint="leave out --out")


def _run_info(run: Path) -> dict:
    """run.json as `dgm fit` writes it when a run starts: what resuming needs."""
    path = run / RUN_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        info = None
    except (OSError, ValueError, RecursionError):
        info = {}
    threads = info.get("threads") if isinstance(info, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("model_file"), str) \
            or not isinstance(info.get("data"), str) \
            or not isinstance(info.get("validation"), (str, type(None))) \
            or not isinstance(info.get("no_score", False), bool) \
            or threads is not None and (type(threads) is not int or threads < 1):
        raise DGMUsageError(f"cannot resume {run}: {path} is missing or is not the JSON dgm fit writes "
                            "(it names the model file and the data)",
                            hint="fit the run again with --overwrite")
    return info


def _train(model, data: dict, validation, out: Path, info: dict, args, *, resume: bool, length: dict) -> int:
    """Fit (or continue) with checkpoints into `out`, then write the run's other files, with
    torch's thread count set to the run's while it runs (as it was afterwards)."""
    import torch

    threads = torch.get_num_threads()
    if info.get("threads") is not None:
        torch.set_num_threads(info["threads"])
    try:
        return _fit_and_write(model, data, validation, out, info, args, resume=resume, length=length)
    finally:
        torch.set_num_threads(threads)


def _fit_and_write(model, data: dict, validation, out: Path, info: dict, args, *, resume: bool,
                   length: dict) -> int:
    n = info["rows"] = len(next(iter(data.values())))
    say(f"{'resuming' if resume else 'fitting'} {model.name} {'on' if resume else 'to'} {n} rows of {info['data']} -> {out}/",
        file=sys.stderr)
    if not resume:
        write_info(out, info)
    stopped: DGMTrainingError | None = None
    signals: list[int] = []
    at_once = False
    try:
        with stop_on_signals() as signals:
            model.fit(data, **length, validation=validation, progress=not args.quiet, resume=resume,
                      checkpoint=out / CHECKPOINT, checkpoint_every=args.checkpoint_every,
                      checkpoint_seconds=args.checkpoint_seconds, should_stop=lambda: bool(signals),
                      **({} if resume else {key: info[key] for key in FIT_DEFAULTS}))
    except KeyboardInterrupt:
        at_once = True
    except DGMTrainingError as err:
        stopped = err
    interrupted = bool(signals) or at_once
    status = EXIT_STATUS.get(signals[0] if signals else signal.SIGINT, 130)
    if at_once:
        kept = (out / CHECKPOINT).is_file()
        say("interrupted again: stopped at once; " + (f"the last checkpoint stays in {out / CHECKPOINT}"
            if kept else "nothing saved"), file=sys.stderr)
        return status
    if not model.fitted:
        if interrupted:
            print("interrupted before the first step; nothing saved", file=sys.stderr)
            return status
        raise stopped  # type: ignore[misc]
    if stopped is not None:
        model.save(out / CHECKPOINT)  # fit writes none on a failure: the state before the failing step
    state = model.training_state
    steps_done = state.steps_done
    batch_size = state.settings["batch_size"]
    write_history(model, out, n, batch_size)
    info.update(steps=steps_done, final_loss=model.history["loss"][-1], interrupted=interrupted,
                stopped=None if stopped is None else stopped.message,
                status="stopped" if interrupted or stopped is not None else "finished")
    if interrupted or stopped is not None:
        write_info(out, info)
        say(stopped if stopped is not None else
            f"interrupted after step {steps_done}; saved the model as it was then to {out / CHECKPOINT} "
            f"(continue with: dgm fit --resume {out})",
            file=sys.stderr)
        return status if interrupted else 1
    _write_samples(model, data, out / "samples.png", seed=info["seed"])
    if validation is not None and not info["no_score"]:
        info["score"] = write_reference_scores(model, validation, out, f"validation data ({info['validation']})",
                                               seed=info["seed"], quiet=args.quiet)
    elif not info["no_score"]:
        info["score"] = write_reference_scores(model, data, out, "training data", seed=info["seed"],
                                               quiet=args.quiet)
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
