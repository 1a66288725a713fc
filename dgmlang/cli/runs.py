"""Run folders: what `dgm fit` writes, how the other commands open one, and the outlier
thresholds drawn from its reference scores.

::

    RUN/model.dgmfit      the fitted model (CompiledModel.save; dgmlang.load_fitted reads it),
                          written during training too: the checkpoint `--resume` continues from
    RUN/loss.csv          the loss per step (and the validation loss per epoch)
    RUN/loss.png          the loss curve
    RUN/samples.png       samples from the fitted model (an image grid for image data)
    RUN/reference_scores.csv  the log-likelihood of each validation row (training rows when
                          there is no --validation), for outlier thresholds
    RUN/run.json          how it was fitted (written when training starts: what `--resume`
                          reads), and the default outlier threshold
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dgmlang.cli.shared import check_writable, placement, score_rows, temporary_pattern, write_atomic
from dgmlang.errors import DGMUsageError

CHECKPOINT = "model.dgmfit"
RUN_INFO = "run.json"
REFERENCE_SCORES = "reference_scores.csv"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
SAMPLES_PNG = "samples.png"
#: Every file `dgm fit` writes in a run folder (glob patterns): a folder holding one of them
#: holds a run, and `--overwrite` deletes exactly these. samples-NAME.png is samples.png for
#: a model with several data variables; the dot-files are temporary files of a write that
#: was cut short (`write_atomic`'s, and `CompiledModel.save`'s for the checkpoint).
_WRITTEN = (LOSS_CSV, LOSS_PNG, SAMPLES_PNG, "samples-*.png", REFERENCE_SCORES, RUN_INFO)
RUN_FILES = (CHECKPOINT, *_WRITTEN, f".{CHECKPOINT}.*.tmp", *map(temporary_pattern, _WRITTEN))
#: Importance samples per row for `dgm score` and for the reference scores written by `dgm fit`
#: (the same number for both, so the default threshold compares like with like).
SCORE_SAMPLES = 100
#: The default outlier threshold: this quantile of the reference rows' log-likelihoods.
THRESHOLD_QUANTILE = 0.01
#: At most this many reference rows are scored at fit time (a random subset beyond it).
MAX_SCORED_ROWS = 5000


def open_run_on(args):
    """`open_run` of ``args.run``, the model moved to the ``--device`` / ``--dtype`` asked for
    (checked before the run is read)."""
    device, dtype = placement(args)
    model, run, info = open_run(args.run)
    return model.to(device, dtype), run, info


def open_run(run: Path):
    """The fitted model of a run folder (or a .dgmfit file) and the run's info dict."""
    from dgmlang.frontend import load_fitted

    run = Path(run)
    try:
        run.stat()
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:  # a name too long, a loop of symlinks, ...
        raise DGMUsageError(f"cannot read {str(run)[:200]}: {getattr(err, 'strerror', None) or err}") from None
    if run.is_dir():
        checkpoint = run / CHECKPOINT
        if not checkpoint.is_file():
            raise DGMUsageError(f"{run} holds no fitted model ({CHECKPOINT})",
                                hint="create one with: dgm fit MODEL.dgm --data DATA --out " + str(run))
        info_path = run / RUN_INFO
        try:
            info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("score", {}), (dict, type(None))):
            raise DGMUsageError(f"{info_path} is not readable JSON (an object as dgm fit writes it)",
                                hint="delete it (the default outlier threshold is then unknown) or fit again")
        return load_fitted(checkpoint), run, info
    if not run.exists():
        raise DGMUsageError(f"no run folder or checkpoint at {run}",
                            hint="give the folder written by dgm fit (--out), or its model.dgmfit")
    try:
        with run.open("rb") as file:
            is_archive = file.read(4) == b"PK\x03\x04"  # torch.save's zip format
    except OSError as err:
        raise DGMUsageError(f"cannot read {run}: {err.strerror or err}") from None
    if not is_archive:
        raise DGMUsageError(f"{run} is not a dgmlang checkpoint",
                            hint="give the run folder written by dgm fit (--out), or its model.dgmfit")
    return load_fitted(run), None, {}


def run_files(folder: Path) -> list[Path]:
    """The files of an earlier run in `folder` (see RUN_FILES), sorted."""
    return sorted({path for pattern in RUN_FILES for path in Path(folder).glob(pattern)})


def prepare_run_folder(out: Path, *, overwrite: bool) -> None:
    """Check, before any work, that `dgm fit` may write the run folder `out`: a folder (or a
    path that can be created) with permission to write, holding no earlier run unless
    `overwrite` (continuing a run is not an overwrite)."""
    out = check_writable(Path(out), folder=True)
    if not out.is_dir():
        return
    found = run_files(out)
    for path in found:
        if path.is_dir() and not path.is_symlink():
            raise DGMUsageError(f"cannot write the run folder '{out}': {path} is a folder")
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise DGMUsageError(f"the run folder '{out}' already holds a run ({names})",
                            hint="give another --out, or --overwrite to delete that run's files and fit anew")


def clear_run(out: Path) -> None:
    """Delete an earlier run's files from `out` (a symlink among them is removed, not followed)."""
    for path in run_files(out):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise DGMUsageError(f"cannot delete the earlier run's file '{path}': {err.strerror or err}") from None


def write_info(out: Path, info: dict) -> None:
    with write_atomic(out / RUN_INFO) as temporary:
        temporary.write_text(json.dumps(info, indent=2) + "\n")


def write_history(model, out: Path, n: int, batch_size: int) -> None:
    from dgmlang.plots import loss_curve

    losses = model.history["loss"]
    validation = model.history.get("validation") or []
    steps_per_epoch = math.ceil(n / min(batch_size, n))
    with write_atomic(out / LOSS_CSV) as temporary, temporary.open("w") as file:
        file.write("step,loss" + (",validation_loss" if validation else "") + "\n")
        for step, loss in enumerate(losses, start=1):
            row = f"{step},{loss:.6g}"
            if validation:
                epoch, rest = divmod(step, steps_per_epoch)
                row += f",{validation[epoch - 1]:.6g}" if rest == 0 and 0 < epoch <= len(validation) else ","
            file.write(row + "\n")
    with write_atomic(out / LOSS_PNG) as temporary:
        loss_curve(losses, temporary, validation=validation or None, steps_per_epoch=steps_per_epoch)


def write_reference_scores(model, data: dict, out: Path, reference: str, *, seed: int | None, quiet: bool,
                           masks: dict | None = None) -> dict:
    """Score (a subset of) the reference rows; their low quantile is the default threshold.
    Held-out rows are the better reference: a flexible model scores its training rows higher
    than new data like them, so a training quantile flags more than its share of new data.
    Rows with a missing entry (NaN, or False in `masks`) are left out: their score is the
    likelihood of fewer entries, not comparable with a complete row's."""
    import numpy as np

    from dgmlang.datafiles import observed_rows, write_csv

    n = len(next(iter(data.values())))
    complete = observed_rows(data, masks or {}, model.ir)
    rows = np.flatnonzero(complete)
    left_out = n - len(rows)
    if not len(rows):
        return {"threshold": None, "why_none": f"every row of the {reference} has a missing entry",
                "incomplete_rows": int(left_out)}
    if len(rows) > MAX_SCORED_ROWS:
        rows = np.sort(np.random.default_rng(0 if seed is None else seed).choice(rows, MAX_SCORED_ROWS,
                                                                                 replace=False))
    try:
        scores = score_rows(model, {k: v[rows] for k, v in data.items()}, num_samples=SCORE_SAMPLES, seed=seed,
                         quiet=quiet, desc=f"score {reference.split(' (')[0]}")
    except DGMUsageError as err:  # a model log_prob cannot serve (a discrete global)
        return {"threshold": None, "why_none": err.message}
    with write_atomic(out / REFERENCE_SCORES) as temporary:
        write_csv(temporary, {"row": rows, "log_prob": scores}, {"row": (), "log_prob": ()})
    finite = scores[np.isfinite(scores)]
    if not len(finite):
        return {"threshold": None, "why_none": "no reference row has a finite log-likelihood"}
    return {"reference": reference, "num_samples": SCORE_SAMPLES, "rows_scored": int(len(rows)),
            **({"incomplete_rows": int(left_out)} if left_out else {}),
            "mean": float(finite.mean()),
            "threshold_quantile": THRESHOLD_QUANTILE,
            "threshold": float(np.quantile(finite, THRESHOLD_QUANTILE))}


def outlier_threshold(text: str | None, run: Path | None, info: dict) -> tuple[float | None, str]:
    """The outlier threshold and where it came from: a number, ``P%`` (that quantile of the
    reference scores written by dgm fit), or the run's default."""
    import numpy as np

    if text is None:
        score = info.get("score") or {}
        threshold = score.get("threshold")
        if threshold is None:
            return None, "no threshold (give --threshold; the run stored none)"
        quantile = score.get("threshold_quantile", THRESHOLD_QUANTILE)
        if not _finite_number(threshold) or not _finite_number(quantile):
            raise DGMUsageError(f"{run / RUN_INFO if run else RUN_INFO}: the stored threshold is not a number",
                                hint="give --threshold, or fit again")
        reference = str(score.get("reference", "training data")).split(" (")[0]
        return float(threshold), (f"the {quantile:.0%} quantile of the log-likelihoods "
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
        scores = _reference_scores(path)
        reference = str((info.get("score") or {}).get("reference", "training data")).split(" (")[0]
        return float(np.quantile(scores, q)), f"the {text} quantile of the {reference}'s log-likelihoods"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DGMUsageError(f"--threshold {text!r}: expected a number (a log-likelihood) or a percentage like 1%")
    return value, "given"


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reference_scores(path: Path):
    """The finite log-likelihoods of a reference_scores.csv (row,log_prob)."""
    import numpy as np

    try:
        with path.open(encoding="utf-8") as file:
            header = file.readline().strip()
            table = np.loadtxt(file, delimiter=",", ndmin=2) if header == "row,log_prob" else None
    except (OSError, ValueError):
        table = None
    if table is None or table.shape[1] != 2:
        raise DGMUsageError(f"{path} is not a table of reference scores (row,log_prob) as dgm fit writes it",
                            hint="fit again, or give a number as the threshold")
    scores = table[:, 1][np.isfinite(table[:, 1])]
    if not len(scores):
        raise DGMUsageError(f"{path} holds no finite reference score", hint="give a number as the threshold")
    return scores
