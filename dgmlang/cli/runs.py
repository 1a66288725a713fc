"""Run folders: what `dgm fit` writes, how the other commands open one, and the outlier
thresholds drawn from its reference scores.

::

    RUN/model.dgmfit      the fitted model (CompiledModel.save; dgmlang.load_fitted reads it)
    RUN/loss.csv          the loss per step (and the validation loss per epoch)
    RUN/loss.png          the loss curve
    RUN/samples.png       samples from the fitted model (an image grid for image data)
    RUN/reference_scores.csv  the log-likelihood of each validation row (training rows when
                          there is no --validation), for outlier thresholds
    RUN/run.json          how it was fitted, and the default outlier threshold
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dgmlang.cli.shared import score_rows
from dgmlang.errors import DGMUsageError

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


def open_run(run: Path):
    """The fitted model of a run folder (or a .dgmfit file) and the run's info dict."""
    from dgmlang.frontend import load_fitted

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


def write_history(model, out: Path, n: int, batch_size: int) -> None:
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


def write_reference_scores(model, data: dict, out: Path, reference: str, *, seed: int | None, quiet: bool) -> dict:
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
        scores = score_rows(model, {k: v[rows] for k, v in data.items()}, num_samples=SCORE_SAMPLES, seed=seed,
                         quiet=quiet, desc=f"score {reference.split(' (')[0]}")
    except DGMUsageError as err:  # a model log_prob cannot serve (a discrete global)
        return {"threshold": None, "why_none": err.message}
    write_csv(out / REFERENCE_SCORES, {"row": rows, "log_prob": scores}, {"row": (), "log_prob": ()})
    finite = scores[np.isfinite(scores)]
    return {"reference": reference, "num_samples": SCORE_SAMPLES, "rows_scored": int(len(rows)),
            "mean": float(finite.mean()),
            "threshold_quantile": THRESHOLD_QUANTILE,
            "threshold": float(np.quantile(finite, THRESHOLD_QUANTILE))}


def outlier_threshold(text: str | None, run: Path | None, info: dict) -> tuple[float | None, str]:
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
