"""Peak memory of `dgm fit` against the number of rows (issue 12, data bigger than memory).

Writes two float32 ``.npy`` files of ``x[64]`` rows (by default 10,000 and 1,000,000: 2.6 MB
and 256 MB) in a temporary folder, fits a small VAE to each with ``dgm fit --steps 500`` in a
fresh interpreter, and samples the child's anonymous memory (``RssAnon`` in
/proc/PID/status: heap and tensors, not the pages of the memory-mapped file, which the
kernel can drop and read again) every 50 ms, keeping the largest. Prints both peaks, their
difference (the issue asks for at most 150 MB) and the wall time of each run.

Linux only (it reads /proc). One BLAS thread in the child.

Usage: ``python benchmarks/memory.py [--rows 10000,1000000] [--steps 500] [--keep DIR]``
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

MODEL = """\
model bench {
    data   x[64]
    latent z[8]

    z ~ Normal(0, 1)
    x ~ Normal(mlp(z, hidden = [64]), 1)
}
"""

#: The issue's bound on the growth of the peak from the small to the large file.
ALLOWED_GROWTH_MB = 150
POLL_SECONDS = 0.05


def write_rows(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` rows of x[64] (float32) written a block at a time (this process stays small)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 64))
    rng = np.random.default_rng(seed)
    block = 65536
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        out[start:stop] = rng.normal(size=(stop - start, 64)).astype(np.float32)
    out.flush()
    del out


def anon_kb(pid: int) -> int | None:
    """The process's RssAnon in kB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_fit(folder: Path, data: Path, steps: int) -> tuple[float, float]:
    """``dgm fit`` of the bench model on `data` in a fresh interpreter: (peak RssAnon in MB,
    wall seconds). Fails loudly when the fit fails."""
    out = folder / f"run-{data.stem}"
    command = [sys.executable, "-m", "dgmlang.cli", "fit", str(folder / "bench.dgm"), "--data", str(data),
               "--steps", str(steps), "--seed", "0", "--out", str(out), "--overwrite", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        kb = anon_kb(child.pid)
        if kb is not None:
            peak = max(peak, kb)
        time.sleep(POLL_SECONDS)
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"dgm fit on {data.name} failed ({child.returncode}):\n{stderr}{stdout}")
    return peak / 1024, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,1000000", help="row counts, comma-separated")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--keep", type=Path, help="write the files and runs here and keep them")
    args = parser.parse_args(argv)
    sizes = [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "bench.dgm").write_text(MODEL)
        results = []
        for rows in sizes:
            data = folder / f"x{rows}.npy"
            write_rows(data, rows)
            peak, seconds = peak_fit(folder, data, args.steps)
            results.append((rows, data.stat().st_size / 2 ** 20, peak, seconds))
            print(f"{rows:>10,} rows  file {results[-1][1]:8.1f} MB  peak RssAnon {peak:8.1f} MB  "
                  f"wall {seconds:6.1f} s", flush=True)
    if len(results) >= 2:
        growth = results[-1][2] - results[0][2]
        verdict = "within" if growth <= ALLOWED_GROWTH_MB else "OVER"
        print(f"peak RssAnon {results[0][0]:,} rows: {results[0][2]:.1f} MB | {results[-1][0]:,} rows: "
              f"{results[-1][2]:.1f} MB | difference {growth:+.1f} MB ({verdict} the {ALLOWED_GROWTH_MB} MB bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
