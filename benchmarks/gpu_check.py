"""`make gpu-check`: the CUDA-marked tests, then the step-time and digits benchmarks on the GPU.

Run from the repository root with the Python that has torch's CUDA build (the Makefile passes
``PY``). Without a usable GPU it says so and exits 1 before running anything; a missing
package is named with the way to bring it to an offline machine. Each stage runs in its own
process and prints its figures; the summary at the end lists each stage's status, and the
exit status is 1 when any stage failed.

Stages (a few minutes on one H200):

1. ``pytest -m cuda tests/``: GPU against CPU for fit, log_prob, sample, invert, load_fitted;
2. ``benchmarks/step_time.py --device cuda``: ms per training step of dgmlang beside plain
   PyTorch and hand-written Pyro, all on the GPU (few steps: ``--steps 50 --repeats 3``);
3. ``benchmarks/digits_ll.py --device cuda --reference``: the digits VAE's test
   log-likelihood (200 epochs, K = 1000, issue 4's bar) beside the plain-PyTorch VAE's.

Usage: ``python benchmarks/gpu_check.py [--quick]`` (``--quick``: 20 epochs for digits_ll).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "pyro", "lark", "networkx", "numpy", "tqdm", "matplotlib", "sklearn", "scipy",
          "hypothesis", "pytest")
OFFLINE_HINT = ("on a machine with network: `pip download --no-deps --only-binary=:all: pyro-ppl==1.9.2 "
                "pyro-api lark -d wheels/`, copy wheels/ over, then `make gpu-check PY=python3 WHEELS=wheels`")


def preflight() -> str | None:
    """Why the checks cannot run here, or None."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if "torch" in missing:
        return "torch is not installed for this Python"
    import torch

    print(f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__}, "
          f"built with CUDA {torch.version.cuda}")
    if not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else \
            "torch finds no usable NVIDIA GPU"
        return f"no GPU present: {why}; nothing was run"
    print(f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s))")
    if missing:
        return f"missing Python packages: {', '.join(missing)} ({OFFLINE_HINT})"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    why_not = preflight()
    if why_not:
        print(f"gpu-check: {why_not}", file=sys.stderr)
        return 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    stages = [
        ("cuda tests", [py, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda", "-rs", "-q",
                        "tests/"]),
        ("step time", [py, "benchmarks/step_time.py", "--device", "cuda", "--steps", "50",
                       "--repeats", "3", "--warmup", "10"]),
        ("digits log-likelihood", [py, "benchmarks/digits_ll.py", "--device", "cuda", "--reference"]
         + (["--epochs", "20"] if quick else [])),
    ]
    results = []
    for name, command in stages:
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT, env=env).returncode
        results.append((name, status, time.perf_counter() - start))
    print("\n=== gpu-check summary")
    for name, status, seconds in results:
        print(f"{name:24s} {'ok' if status == 0 else f'FAILED (exit {status})':18s} {seconds:6.0f} s")
    return 0 if all(status == 0 for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
