"""`dgm fit`: fit a model to data and write a run folder; `dgm fit --resume RUN` continues one.

The run folder's checkpoint (model.dgmfit) is written every --checkpoint-every steps, every
--checkpoint-seconds seconds (60) and at the end, atomically; run.json is written when the
run starts (what `--resume` needs to continue it) and again when it ends. SIGINT (Ctrl-C)
and SIGTERM stop training after the step in progress, write the checkpoint and exit 130 and
143; a second signal stops at once, keeping the last checkpoint.

With --nproc N the command starts N processes (`dgmlang.distributed.launch`); rank 0 writes
the run folder and every checkpoint, the others write nothing. The launcher passes a SIGINT
or SIGTERM on to every process; each says so at its step's check-in, so all stop after the
same step, rank 0 writes the checkpoint, and the launcher exits 130 or 143. `--resume RUN`
starts as many processes as the run was trained by (run.json's "processes").
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from dgmlang.cli.runs import (CHECKPOINT, REFERENCE_SCORES, RUN_INFO, THRESHOLD_QUANTILE, clear_run,
                              prepare_run_folder, write_history, write_info, write_reference_scores)
from dgmlang.cli.shared import check_budget, draw_samples, placement, row_values, say, to_numpy
from dgmlang.errors import DGMDataError, DGMError, DGMTrainingError, DGMUsageError

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
    """`dgm fit`; with ``--nproc N`` (or resuming a run trained so), in N processes (see
    `dgmlang.distributed`), of which rank 0 writes the run folder and reports; under
    torchrun, one of the launched processes."""
    from dgmlang import distributed

    if distributed.launched():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if args.nproc not in (None, 1, local):
            raise DGMUsageError(f"--nproc {args.nproc} under a launcher that started {local} processes here",
                                hint="leave out --nproc when running under torchrun")
    else:
        processes = _processes_asked(args)
        if processes > 1:
            _check_inputs(args)  # a mistake is reported once, before the processes start
            return distributed.launch("dgmlang.cli", args.argv, processes)
    group = distributed.join_from_environment(device=getattr(args, "device", None))
    try:
        if group is not None and not group.writes_files:
            return _fit_without_files(args)
        return _fit_run(args)
    except DGMError:
        if group is not None and group.failed and not group.writes_files:
            return 1  # rank 0 reports the failure, with its message
        raise
    except KeyboardInterrupt:
        if group is not None and not group.writes_files:
            return 130  # rank 0 reports it; its last checkpoint stays
        raise
    finally:
        distributed.leave()


def _processes_asked(args) -> int:
    """How many processes to start: --nproc, or when resuming without it, as many as the run
    was trained by (run.json's "processes"; a run.json `_resume` refuses counts 1 here)."""
    if args.nproc is not None:
        return args.nproc
    if args.resume is None:
        return 1
    try:
        return _run_info(Path(args.resume)).get("processes", 1)
    except DGMUsageError:
        return 1  # reported by the one process


def _settings(args) -> dict:
    """The run's settings: the options given, else `FIT_DEFAULTS`."""
    return {key: default if getattr(args, key) is None else getattr(args, key)
            for key, default in FIT_DEFAULTS.items()}


def _check_inputs(args) -> None:
    """What `_fit_run` checks before training (the run folder, the model, the data; with
    --resume, the run), before a multi-process fit starts its processes."""
    from dgmlang.frontend import check_source, read_source, select

    placement(args)  # a device this torch cannot use is refused before anything is read
    if args.resume is not None:
        _prepare_resume(args, tidy=False)
        return
    settings = _settings(args)
    if args.out is not None:
        prepare_run_folder(args.out, overwrite=args.overwrite)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file), guide_order=args.guide_order or "nami"), args.model, str(args.file))
    if args.out is None:
        prepare_run_folder(Path("runs") / checked.ir.name, overwrite=args.overwrite)
    check_budget(f"--batch-size {settings['batch_size']} x --num-particles {settings['num_particles']}",
                 settings["batch_size"] * settings["num_particles"] * row_values(checked.ir))
    _read_training_data(args.data, args.mask, checked.ir, checked.facts, checked.plan)
    if args.validation:
        _read_validation_data(args.validation, checked.ir, checked.facts)


def _read_training_data(spec, mask_spec, ir, facts, plan) -> tuple[dict, dict | None]:
    """The training data and their masks (None when every entry is observed), checked: NaN
    or a False mask entry marks a missing entry, accepted where fit can marginalize it or
    where it is a label of the `plan` (semi-supervised)."""
    from dgmlang.datafiles import read_observed

    data, masks = read_observed(spec, mask_spec, ir, purpose="fit", facts=facts,
                                labels=[step.latent for step in plan.labels])
    return data, masks or None


def _read_validation_data(spec, ir, facts) -> dict:
    """The --validation data, checked (NaN marks a missing entry, as in the training data)."""
    from dgmlang.datafiles import read_observed

    data, masks = read_observed(spec, None, ir, purpose="validation", facts=facts)
    if masks:  # missing class labels (NaN in a Categorical variable): fit's validation takes no mask
        raise DGMDataError(f"{spec}: the validation data have missing class labels ("
                           f"{', '.join(map(repr, masks))})",
                           hint="give complete validation rows for class-label variables")
    return data


def mask_digest(masks: dict | None) -> str | None:
    """A SHA-256 of the masks (name, shape and the bits), so --resume can tell a different
    mask from the run's."""
    import hashlib

    import numpy as np

    if not masks:
        return None
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = np.asarray(masks[name], dtype=bool)
        digest.update(f"{name}{mask.shape}".encode())
        digest.update(np.packbits(mask.ravel()).tobytes())
    return digest.hexdigest()


def _fit_without_files(args) -> int:
    """A process of a multi-process fit other than rank 0: train its share (or continue the
    run with --resume), write nothing; a signal stops all processes after the same step."""
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    if args.resume is not None:
        model, data, masks, validation, _, info = _prepare_resume(args, tidy=False)
        options = {"resume": True}
    else:
        source = read_source(args.file)
        checked = select(check_source(source, str(args.file), guide_order=args.guide_order or "nami"), args.model, str(args.file))
        data, masks = _read_training_data(args.data, args.mask, checked.ir, checked.facts, checked.plan)
        validation = _read_validation_data(args.validation, checked.ir, checked.facts) if args.validation else None
        device, dtype = placement(args)
        model = compile_checked(checked, source=source, filename=str(args.file), device=device,
                                dtype=dtype)
        info = {"threads": args.threads}
        options = {"epochs": args.epochs, "steps": args.steps, **_settings(args)}
    with _thread_count(info.get("threads")), stop_on_signals() as signals:
        model.fit(data, mask=masks, validation=validation, progress=False, should_stop=lambda: bool(signals),
                  compile=args.compile, **options)
    return EXIT_STATUS[signals[0]] if signals else 0


def _processes() -> int:
    """How many processes train together (1 outside a process group)."""
    from dgmlang import distributed

    group = distributed.current()
    return 1 if group is None else group.size


def _fit_run(args) -> int:
    """`dgm fit` in one process, or as rank 0 of several: fit (or resume) and write the run."""
    if args.resume is not None:
        return _resume(args)
    from dgmlang.frontend import check_source, compile_checked, read_source, select

    settings = _settings(args)
    device, dtype = placement(args)
    if args.out is not None:
        prepare_run_folder(args.out, overwrite=args.overwrite)
    source = read_source(args.file)
    checked = select(check_source(source, str(args.file), guide_order=args.guide_order or "nami"), args.model, str(args.file))
    ir = checked.ir
    out = args.out or Path("runs") / ir.name
    if args.out is None:
        prepare_run_folder(out, overwrite=args.overwrite)
    check_budget(f"--batch-size {settings['batch_size']} x --num-particles {settings['num_particles']}",
                 settings["batch_size"] * settings["num_particles"] * row_values(ir))
    data, masks = _read_training_data(args.data, args.mask, ir, checked.facts, checked.plan)
    validation = _read_validation_data(args.validation, ir, checked.facts) if args.validation else None
    prepare_run_folder(out, overwrite=args.overwrite)  # again: the folder may have changed meanwhile
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DGMUsageError(f"cannot create the run folder '{out}': {err.strerror or err}") from None

    model = compile_checked(checked, source=source, filename=str(args.file), device=device, dtype=dtype)
    clear_run(out)  # an earlier run's files (--overwrite) go before the first file of this one
    info = {"model_file": str(args.file), "model": ir.name, "data": str(args.data),
            "mask": None if args.mask is None else str(args.mask), "mask_sha256": mask_digest(masks),
            "validation": args.validation, "rows": len(next(iter(data.values()))), "steps": 0,
            "epochs": args.epochs, **settings, "processes": _processes(), "threads": args.threads,
            "guide_order": model.plan.order,
            "no_score": args.no_score, "status": "running"}
    return _train(model, data, masks, validation, out, info, args, resume=False,
                  length={"epochs": args.epochs, "steps": args.steps})


def _resume(args) -> int:
    """`dgm fit --resume RUN`: continue the run from its checkpoint, with its own settings,
    model text and data (run.json says where they are; a FILE, --data or --validation given
    must match)."""
    model, data, masks, validation, run, info = _prepare_resume(args, tidy=True)
    return _train(model, data, masks, validation, run, info, args, resume=True, length={})


def _prepare_resume(args, *, tidy: bool) -> tuple:
    """What `--resume RUN` continues, checked: the model loaded from the run's checkpoint,
    the data, the validation data, the run folder and its run.json (updated). `tidy`
    deletes what a checkpoint write cut short left (the process that writes files only)."""
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
    device, dtype = placement(args)
    model = load_fitted(saved, device=device, dtype=dtype)
    for leftover in run.glob(f".{CHECKPOINT}.*.tmp") if tidy else ():  # a write cut short by kill -9
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
    mask_spec = _resume_mask(args, run, info)
    data, masks = _read_training_data(data_spec, mask_spec, model.ir, model.facts, model.plan)
    if mask_spec is not None and mask_digest(masks) != info.get("mask_sha256"):
        raise DGMUsageError(
            f"cannot resume {run}: the mask {mask_spec} differs from the one the run was fitted with "
            f"({info['mask']}, recorded in {run / RUN_INFO})",
            hint="resume with the run's mask (--mask), or fit anew with the new one (--overwrite or another --out)")
    validation = None
    if args.validation is not None:
        info["validation"] = args.validation
    if info.get("validation"):
        validation = _read_validation_data(info["validation"], model.ir, model.facts)
    info.setdefault("no_score", False)
    info.setdefault("validation", None)
    info["seed"] = state.settings["seed"] if state.settings["seed"] is not None else FIT_DEFAULTS["seed"]
    # run.json is rewritten when the resumed run stops or ends (not before: a refusal in fit,
    # other data say, leaves it as it was)
    info.update(data=str(data_spec), mask=None if mask_spec is None else str(mask_spec), status="running",
                resumed_at=state.steps_done,
                **{key: value for key, value in (("threads", args.threads), ("no_score", args.no_score or None))
                   if value is not None})
    return model, data, masks, validation, run, info


def _resume_mask(args, run: Path, info: dict) -> str | None:
    """The mask file a resumed run reads: --mask when given (the run's moved), else run.json's;
    a mask given to a run fitted without one is refused."""
    recorded = info.get("mask")
    if args.mask is None:
        if recorded is not None and not Path(recorded).exists():
            raise DGMUsageError(f"cannot resume {run}: it was fitted with the mask {recorded}, which is not "
                                "there any more", hint="give the mask with --mask (the same mask, moved)")
        return recorded
    if recorded is None:
        raise DGMUsageError(f"cannot resume {run} with --mask {args.mask}: the run was fitted without a mask",
                            hint="leave out --mask, or fit anew with it (--overwrite or another --out)")
    return str(args.mask)


def _check_same_settings(args, run: Path, model, info: dict) -> None:
    """The options that set a run (given again with `--resume`, as in the command that started
    it) must agree with the run's; none can change it."""
    from dgmlang.runstate import PROCESSES

    state = model.training_state
    stored = {**{key: state.settings[key] for key in FIT_DEFAULTS}, "model": model.name,
              "nproc": state.settings[PROCESSES], "guide_order": model.plan.order,
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
            or not isinstance(info.get("mask"), (str, type(None))) \
            or not isinstance(info.get("mask_sha256"), (str, type(None))) \
            or not isinstance(info.get("no_score", False), bool) \
            or threads is not None and (type(threads) is not int or threads < 1) \
            or type(info.get("processes", 1)) is not int or info.get("processes", 1) < 1:
        raise DGMUsageError(f"cannot resume {run}: {path} is missing or is not the JSON dgm fit writes "
                            "(it names the model file and the data)",
                            hint="fit the run again with --overwrite")
    return info


def _train(model, data: dict, masks: dict | None, validation, out: Path, info: dict, args, *, resume: bool,
           length: dict) -> int:
    """Fit (or continue) with checkpoints into `out`, then write the run's other files, with
    torch's thread count set to the run's while it runs (as it was afterwards)."""
    with _thread_count(info.get("threads")):
        return _fit_and_write(model, data, masks, validation, out, info, args, resume=resume, length=length)


@contextmanager
def _thread_count(threads: int | None):
    """torch's thread count set to `threads` (when given) for the block, as it was after."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_and_write(model, data: dict, masks: dict | None, validation, out: Path, info: dict, args, *,
                   resume: bool, length: dict) -> int:
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
            model.fit(data, mask=masks, **length, validation=validation, progress=not args.quiet, resume=resume,
                      checkpoint=out / CHECKPOINT, checkpoint_every=args.checkpoint_every,
                      checkpoint_seconds=args.checkpoint_seconds, should_stop=lambda: bool(signals),
                      compile=args.compile, **({} if resume else {key: info[key] for key in FIT_DEFAULTS}))
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
    from dgmlang.runstate import PROCESSES

    state = model.training_state
    if stopped is None and not state.finished:
        interrupted = True  # [distributed] another process was asked to stop: all stopped together
    if stopped is not None:
        model.save(out / CHECKPOINT)  # fit writes none on a failure: the state before the failing step
    steps_done = state.steps_done
    write_history(model, out, n, state.settings["batch_size"] * state.settings[PROCESSES])
    info.update(steps=steps_done, processes=state.settings[PROCESSES], final_loss=model.history["loss"][-1],
                interrupted=interrupted, stopped=None if stopped is None else stopped.message,
                status="stopped" if interrupted or stopped is not None else "finished")
    if args.compile and model.history.get("compile_seconds"):
        warmup = model.history["compile_seconds"][-1]
        if warmup == warmup:  # NaN: it fell back (the warning said why)
            info["compile_seconds"] = warmup
            say(f"compiled the training step with torch.compile: {warmup:.1f} s of warm-up", file=sys.stderr)
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
                                               quiet=args.quiet, masks=masks)
    write_info(out, info)
    say(f"final loss {info['final_loss']:.4g} nats per row after {steps_done} steps", file=sys.stderr)
    left_out = info.get("score", {}).get("incomplete_rows")
    if left_out:
        say(f"note: {left_out} row{'s' if left_out > 1 else ''} with missing entries "
            f"{'were' if left_out > 1 else 'was'} left out of the reference scores (their "
            "log-likelihood covers fewer entries, not comparable with a complete row's)", file=sys.stderr)
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
