"""What every example script shares: its options, its output folder, and fitting a model once.

Every script runs at full scale by default and at a tiny scale with ``--quick`` (or the
environment variable ``DGM_QUICK=1``), which is what the test suite does. Pictures and fitted
models go to ``--out`` (default ``out/examples``). A fitted model is cached there under its
name and training length, so the scripts that share the digits VAE fit it once.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import dgmlang  # noqa: E402


def options(description: str, *, epochs: int, quick_epochs: int = 2,
            extra=None) -> argparse.Namespace:
    """Parse the shared options; ``args.epochs`` is already the quick one under --quick.
    `extra(parser)` adds a script's own options."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("DGM_QUICK") == "1",
                        help="a tiny run (seconds), as the test suite does; also DGM_QUICK=1")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {epochs}; {quick_epochs} with --quick)")
    parser.add_argument("--out", type=Path, default=Path("out/examples"), help="folder for pictures and fitted models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = quick_epochs if args.quick else epochs
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def fitted(model_file: str, data, args, *, cache: bool = True, prepare=None, label: str | None = None,
           **fit_options) -> dgmlang.CompiledModel:
    """Load `model_file` from examples/ and fit it to `data` for ``args.epochs`` epochs, or
    load the model an earlier run fitted the same way (kept in ``args.out``).

    `prepare(model)` runs on the compiled model before it is fitted (e.g.
    `dgmlang.statespace.mean_field`, which swaps in another guide); such a fit is neither
    cached nor saved, since its checkpoint's source would compile to the guide it replaced.
    `label` names the fit in what is printed (default: the file's stem)."""
    name = Path(model_file).stem
    checkpoint = args.out / f"{name}-{args.epochs}ep{'-quick' if args.quick else ''}.dgmfit"
    if prepare is None and cache and checkpoint.exists():
        print(f"loading {checkpoint} (delete it to fit again)")
        return dgmlang.load_fitted(checkpoint)
    model = dgmlang.load(HERE / model_file)
    if prepare is not None:
        prepare(model)
    start = time.perf_counter()
    losses = model.fit(data, epochs=args.epochs, seed=args.seed, progress=not args.quick, **fit_options)
    print(f"fitted {label or name} for {args.epochs} epochs in {time.perf_counter() - start:.0f} s; "
          f"final loss {losses[-1]:.2f} nats per data point")
    if prepare is None:
        model.save(checkpoint)
    return model


def wrote(path) -> None:
    print(f"wrote {path}")
