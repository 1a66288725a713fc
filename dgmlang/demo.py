"""`make demo`: check every example, draw a model and its derived guide, fit the digits VAE,
report its test log-likelihood and write a grid of samples.

Run from the repository root: ``python -m dgmlang.demo [--epochs N] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import dgmlang
    from dgmlang.cli import summary
    from dgmlang.frontend import check_source, read_source
    from dgmlang.plots import draw_graphs, image_grid

    print("== dgm check examples/*.dgm")
    for path in sorted(EXAMPLES.glob("*.dgm")):
        for checked in check_source(read_source(path), str(path)):
            print(f"{path.name}: {summary(checked.ir)}")
            for latent, inputs in checked.plan.as_list():
                print(f"    guide: {latent} <- {inputs if isinstance(inputs, str) else ', '.join(inputs) or '(variational parameters)'}")

    (hvae,) = check_source(read_source(EXAMPLES / "digits_hvae.dgm"), "digits_hvae.dgm")
    graph_png = draw_graphs(hvae.graph, hvae.plan, hvae.ir.name, args.out / "digits_hvae_graph.png")
    print(f"\n== wrote {graph_png}")

    print(f"\n== fit digits_vae on the 8x8 digits ({args.epochs} epochs, batch 128, Adam 1e-3)")
    digits = dgmlang.datasets.digits()
    model = dgmlang.load(EXAMPLES / "digits_vae.dgm")
    start = time.perf_counter()
    losses = model.fit({"x": digits.train_x}, epochs=args.epochs, seed=0)
    print(f"trained in {time.perf_counter() - start:.1f} s; final loss {losses[-1]:.2f} nats per image")
    ll = model.log_prob({"x": digits.test_x}, num_samples=1000, seed=0)
    print(f"test log-likelihood (importance-weighted, K=1000): {ll.mean().item():.2f} nats per image")

    samples = model.sample(40, seed=0)["x"]
    grid = image_grid(samples.numpy(), args.out / "digits_vae_samples.png", shape=(8, 8), vmax=16)
    model.save(args.out / "digits_vae.dgmfit")
    print(f"wrote {grid} and {args.out / 'digits_vae.dgmfit'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
