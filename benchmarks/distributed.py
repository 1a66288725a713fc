"""Data-parallel training (issue 12, item 2): digits_vae with 2 processes against 1 process.

Trains ``examples/digits_vae.dgm`` on the digits training split, once in one process with
batch 128 and once in two gloo processes with batch 64 each (the same effective batch of
128 rows per step, the same epochs and seed), for each seed, and prints:

* the test log-likelihood (`log_prob`, K importance samples, nats per image) of each run, the
  means over the seeds and their difference: two processes should reach the one-process figure
  within 0.5 nats (the exit status is 1 when they do not);
* training rows per second (epochs x rows / the seconds `fit` took, rank 0's clock), one torch
  thread per process, so two processes use the machine's two cores.

The two-process runs are started by `torch.distributed.run` (``--standalone``, a free port);
each process runs this file with ``--worker``. Usage (from the repository root)::

    .venv/bin/python benchmarks/distributed.py                 # --epochs 30 --seeds 0,1 --num-samples 200
    .venv/bin/python benchmarks/distributed.py --epochs 100 --num-samples 1000

>>> parse_args(["--seeds", "3,4"]).seeds
[3, 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # dgmlang, when not installed

MODEL_FILE = ROOT / "examples" / "digits_vae.dgm"
#: the most the two-process test log-likelihood may trail the one-process one (nats per image)
TOLERANCE = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1])
    parser.add_argument("--num-samples", type=int, default=200, help="K of the test log-likelihood")
    parser.add_argument("--batch-size", type=int, default=128, help="the effective batch (rows per step)")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)  # one of the 2 processes
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def train_and_score(epochs: int, batch_size: int, seed: int, num_samples: int) -> dict:
    """Fit digits_vae (in the process group, when one is started); the seconds `fit` took and,
    on rank 0, the test log-likelihood."""
    import torch.distributed as dist

    import dgmlang
    from dgmlang.datasets import digits

    data = digits()
    model = dgmlang.load(MODEL_FILE)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    model.fit({"x": data.train_x}, epochs=epochs, batch_size=batch_size, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "rows_per_second": epochs * len(data.train_x) / seconds}
    if not dist.is_initialized() or dist.get_rank() == 0:
        result["test_ll"] = model.log_prob({"x": data.test_x}, num_samples=num_samples,
                                           seed=seed).mean().item()
    return result


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = train_and_score(args.epochs, args.batch_size // dist.get_world_size(), args.seed, args.num_samples)
    if dist.get_rank() == 0:
        Path(args.worker).write_text(json.dumps(result))
    dist.destroy_process_group()


def two_processes(args: argparse.Namespace, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        __file__, "--worker", str(out), "--seed", str(seed), "--epochs", str(args.epochs),
                        "--batch-size", str(args.batch_size), "--num-samples", str(args.num_samples)],
                       env=env, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import torch

    torch.set_num_threads(1)
    print(f"digits_vae, {args.epochs} epochs, effective batch {args.batch_size}, Adam 1e-3, "
          f"test log-likelihood with K={args.num_samples}; one torch thread per process, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    one, two = [], []
    for seed in args.seeds:
        one.append(train_and_score(args.epochs, args.batch_size, seed, args.num_samples))
        two.append(two_processes(args, seed))
        print(f"seed {seed}: 1 process {one[-1]['test_ll']:.2f} nats ({one[-1]['rows_per_second']:.0f} rows/s); "
              f"2 processes x batch {args.batch_size // 2}: {two[-1]['test_ll']:.2f} nats "
              f"({two[-1]['rows_per_second']:.0f} rows/s)", flush=True)
    mean_one = sum(r["test_ll"] for r in one) / len(one)
    mean_two = sum(r["test_ll"] for r in two) / len(two)
    speed_one = sum(r["rows_per_second"] for r in one) / len(one)
    speed_two = sum(r["rows_per_second"] for r in two) / len(two)
    print(f"mean test log-likelihood: 1 process {mean_one:.2f}, 2 processes {mean_two:.2f} "
          f"(difference {mean_two - mean_one:+.2f} nats; reaches it within {TOLERANCE}: "
          f"{'yes' if mean_two >= mean_one - TOLERANCE else 'NO'})")
    print(f"training rows per second: 1 process {speed_one:.0f}, 2 processes {speed_two:.0f} "
          f"(x{speed_two / speed_one:.2f})")
    return 0 if mean_two >= mean_one - TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
