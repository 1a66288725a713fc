"""Inversion with missing entries: the tutorial's case (issue 13, item 4).

Fits ``examples/digits_vae.dgm`` with ``dgm fit``'s defaults (or reads a run folder given with
``--run``), hides entries of the 360 test digits — the bottom half, or 50% of the pixels at
random — and prints, side by side for each pattern:

* mean imputation (each pixel's training mean): the RMSE a method must beat;
* ``invert`` with ``method="resample"`` (the default): importance resampling from the guide's
  mixture over fillings, every row; the call's time and the RMSE of the posterior-mean
  completion on the hidden pixels;
* ``invert`` with ``method="gibbs"`` (Metropolis-within-Gibbs chains) on the first
  ``--gibbs-rows`` rows (all 360 take over two minutes), beside ``resample`` on the same rows;
* the whole ``dgm invert`` command (start-up, loading, writing the .npz), timed as a subprocess.

Everything runs on one thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1`` for the
command), 100 posterior samples, seed 0. Usage (from the repository root)::

    .venv/bin/python benchmarks/invert_missing.py                 # fits a run first (~15 s)
    .venv/bin/python benchmarks/invert_missing.py --run runs/vae --gibbs-rows 360

>>> parse_args(["--gibbs-rows", "10"]).gibbs_rows
10
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dgmlang

ROOT = Path(__file__).resolve().parent.parent
DGM = Path(sys.executable).with_name("dgm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a run folder of digits_vae from dgm fit (default: fit one)")
    p.add_argument("--gibbs-rows", type=int, default=40, help="rows inverted with method='gibbs' too")
    p.add_argument("--num-samples", type=int, default=100)
    return p.parse_args(argv)


def patterns(test_x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Missing-entry masks (True = missing): the bottom half, and 50% of pixels at random."""
    bottom = torch.zeros_like(test_x, dtype=torch.bool)
    bottom[:, 32:] = True
    random = torch.from_numpy(np.random.default_rng(0).random(tuple(test_x.shape)) < 0.5)
    return {"bottom half": bottom, "random 50%": random}


def rmse(completed: torch.Tensor, truth: torch.Tensor, missing: torch.Tensor) -> float:
    return float(((completed - truth)[missing] ** 2).mean().sqrt())


def timed_invert(model, partial: torch.Tensor, truth: torch.Tensor, missing: torch.Tensor, *,
                 method: str, num_samples: int) -> tuple[float, float]:
    start = time.perf_counter()
    post = model.invert({"x": partial}, num_samples=num_samples, seed=0, progress=False, method=method)
    seconds = time.perf_counter() - start
    return seconds, rmse(post["x"].mean(0), truth, missing)


def command_seconds(run: Path, partial: torch.Tensor, num_samples: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "partial.npz", x=partial.numpy())
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        subprocess.run([str(DGM), "invert", str(run), "--data", str(Path(tmp) / "partial.npz"),
                        "--num-samples", str(num_samples), "-q", "-o", str(Path(tmp) / "post.npz")],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    digits = dgmlang.datasets.digits()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "vae"
            subprocess.run([str(DGM), "fit", str(ROOT / "examples" / "digits_vae.dgm"), "--data", "digits",
                            "--out", str(run), "-q"], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        model = dgmlang.load_fitted(run / "model.dgmfit" if run.is_dir() else run)
        truth = digits.test_x
        column_means = digits.train_x.mean(0)
        rows = slice(0, args.gibbs_rows)
        print(f"digits_vae, {len(truth)} test digits, {args.num_samples} posterior samples, one thread")
        print(f"{'pattern':<12} {'method':<32} {'seconds':>8} {'RMSE':>7}")
        for name, missing in patterns(truth).items():
            partial = torch.where(missing, torch.tensor(float("nan")), truth)
            mean_fill = torch.where(missing, column_means, truth)
            print(f"{name:<12} {'mean imputation':<32} {'':>8} {rmse(mean_fill, truth, missing):>7.3f}")
            seconds, error = timed_invert(model, partial, truth, missing, method="resample",
                                          num_samples=args.num_samples)
            print(f"{name:<12} {'resample, all rows':<32} {seconds:>8.2f} {error:>7.3f}")
            print(f"{name:<12} {'dgm invert command, all rows':<32} "
                  f"{command_seconds(run, partial, args.num_samples):>8.2f}")
            for method in ("resample", "gibbs"):
                seconds, error = timed_invert(model, partial[rows], truth[rows], missing[rows], method=method,
                                              num_samples=args.num_samples)
                label = f"{method}, first {args.gibbs_rows} rows"
                print(f"{name:<12} {label:<32} {seconds:>8.2f} {error:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
