"""Semi-supervised classification: 100 (or 300) labelled digits and 1,337 unlabelled ones.

`semi_supervised.dgm` is M2 of Kingma et al. (2014): the class y is data that is missing on
most rows. `fit` sums y out under the derived classifier q(y | x) where it is missing and adds
the classification term on the labelled rows (here aux_weight = 144, 0.1 x the training rows,
rounded; fit's default is 46: docs/benchmarks.md compares both); `class_posterior` gives q(y | x). Each fit is 200 epochs at lr 1e-3 and
50 more at 1e-4. Full scale takes about 2 minutes per draw on one CPU thread.
For each label count, five balanced label draws (seeds 0..4) are compared with a supervised
baseline: a classifier of the same architecture as q(y | x) trained on the labelled rows only.

    python examples/semi_supervised.py            # full scale: 100 and 300 labels, 5 draws each
    python examples/semi_supervised.py --quick    # seconds
"""
import json
import time

import torch
from _common import HERE, dgmlang, options

from dgmlang.nets import FlatMLP

#: Training length of the baseline classifier (full-batch Adam steps on the labelled rows).
BASELINE_STEPS = 1000


def balanced_labels(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Which rows keep their label: `per_class` rows of each class, drawn with `seed`."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        rows = (y == c).nonzero().flatten()
        keep[rows[torch.randperm(len(rows), generator=g)[:per_class]]] = True
    return keep


def baseline(model, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor,
             test_y: torch.Tensor, *, seed: int, steps: int) -> float:
    """Test accuracy of q(y | x)'s architecture trained on (x, y) alone (cross-entropy)."""
    net = model.guide.label_nets["y"]
    torch.manual_seed(seed)
    clf = FlatMLP(net.layers[0].in_features, [layer.out_features for layer in net.layers[:-1]
                                              if isinstance(layer, torch.nn.Linear)], 10, "relu")
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    with torch.no_grad():
        return (clf(test_x).argmax(1) == test_y).float().mean().item()


def run(per_class: int, draw: int, *, epochs: int, train: dict, test: dict, quick: bool,
        aux_weight: float = 46.0, lr: float = 1e-3, final_epochs: int = 0) -> dict:
    """Fit the model with `per_class` labels per class (label draw `draw`); accuracies."""
    labelled = balanced_labels(train["y"], per_class, seed=draw)
    model = dgmlang.load(HERE / "semi_supervised.dgm")
    start = time.perf_counter()
    model.fit({"x": train["x"], "y": train["y"]}, mask={"y": labelled}, epochs=epochs,
              seed=draw, progress=False, aux_weight=aux_weight, lr=lr)
    if final_epochs:  # a few epochs at a tenth of the rate (Adam's state kept) settle q(y | x)
        model.fit({"x": train["x"], "y": train["y"]}, mask={"y": labelled}, epochs=final_epochs,
                  seed=draw, progress=False, aux_weight=aux_weight, lr=lr / 10)
    seconds = time.perf_counter() - start
    probs = model.class_posterior({"x": test["x"]}, "y")
    accuracy = (probs.argmax(1) == test["y"]).float().mean().item()
    base = baseline(model, train["x"][labelled], train["y"][labelled], test["x"], test["y"], seed=draw,
                    steps=20 if quick else BASELINE_STEPS)
    return {"labels": int(labelled.sum()), "draw": draw, "accuracy": accuracy,
            "baseline": base, "seconds": seconds}


if __name__ == "__main__":
    def extra(parser):
        parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30],
                            help="labels per class, one run each (default 10 30: 100 and 300 labels)")
        parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                            help="label draws, by seed (default 0 1 2 3 4)")
        parser.add_argument("--aux-weight", type=float, default=None,
                            help="weight of the classification term (default 0.1 x the training "
                                 "rows, rounded: 144 on the digits; fit's own default is 46)")
        parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
        parser.add_argument("--final-epochs", type=int, default=50,
                            help="epochs at lr/10 after the others (default 50; 0 skips them)")

    args = options(__doc__.splitlines()[0], epochs=200, extra=extra)
    torch.set_num_threads(1)
    digits = dgmlang.datasets.digits()
    train, test = digits.as_dict("train"), digits.as_dict("test")
    if args.quick:
        train = {k: v[:300] for k, v in train.items()}
    counts, draws = ((1,), (0,)) if args.quick else (args.per_class, args.draws)
    if args.aux_weight is None:
        args.aux_weight = float(round(0.1 * len(train["x"])))
    results = []
    for per_class in counts:
        for draw in draws:
            r = run(per_class, draw, epochs=args.epochs, train=train, test=test, quick=args.quick,
                    aux_weight=args.aux_weight, lr=args.lr,
                    final_epochs=0 if args.quick else args.final_epochs)
            results.append(r)
            print(f"{r['labels']} labels, draw {draw}: test accuracy {r['accuracy']:.3f} "
                  f"(baseline on the labelled rows alone {r['baseline']:.3f}; fit {r['seconds']:.0f} s)",
                  flush=True)
        mine = [r for r in results if r["labels"] == per_class * 10]
        mean = sum(r["accuracy"] for r in mine) / len(mine)
        base = sum(r["baseline"] for r in mine) / len(mine)
        print(f"{per_class * 10} labels: mean test accuracy {mean:.3f}, baseline {base:.3f}", flush=True)
    (args.out / "semi_supervised.json").write_text(json.dumps(results, indent=1))
