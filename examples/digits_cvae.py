"""Conditional generation: draw the digit you ask for.

`digits_cvae.dgm` makes the class `y` an *input* (a control signal): it is given when fitting,
and chosen freely when sampling. After fitting on the 8x8 digits we draw ten images of each
class (a hundred for the score) and ask an independent judge - scikit-learn's SVC() trained on
the real training digits (counts / 16) - which digit each drawing shows; the drawings are the
Binomial counts `sample` gives, as a user gets them. Also prints the model's test
log-likelihood (K = 1,000). Writes a 10x10 grid, one row per requested class.

    python examples/digits_cvae.py            # full scale (300 epochs)
    python examples/digits_cvae.py --quick    # seconds
"""
import numpy as np
from _common import dgmlang, fitted, options, wrote
from sklearn.svm import SVC

from dgmlang.plots import image_grid

args = options(__doc__.splitlines()[0], epochs=300)
digits = dgmlang.datasets.digits()
train = digits.as_dict("train")
if args.quick:
    train = {k: v[:256] for k, v in train.items()}
model = fitted("digits_cvae.dgm", train, args)

per_class = 10 if args.quick else 100
classes = np.repeat(np.arange(10), per_class)
drawn = model.sample(len(classes), inputs={"y": classes}, seed=args.seed)["x"].numpy()

judge = SVC().fit(digits.train_x.numpy() / 16, digits.train_y.numpy())
print(f"the judge reads {judge.score(digits.test_x.numpy() / 16, digits.test_y.numpy()):.1%} of the real test digits correctly")
agreement = judge.predict(drawn / 16) == classes
print(f"it reads {agreement.mean():.1%} of the generated digits as the class they were drawn for")
test = digits.as_dict("test")
if args.quick:
    test = {k: v[:32] for k, v in test.items()}
score = model.log_prob(test, num_samples=50 if args.quick else 1000, seed=0, progress=False).mean()
print(f"test log-likelihood {float(score):.2f} nats per image (K = {50 if args.quick else 1000})")
print("per class:", " ".join(f"{c}:{agreement[classes == c].mean():.0%}" for c in range(10)))

first_ten = np.concatenate([drawn[classes == c][:10] for c in range(10)])
wrote(image_grid(first_ten, args.out / "cvae_classes.png", shape=(8, 8), ncols=10, vmax=16,
                 row_labels=[f"y = {c}" for c in range(10)], title="digits_cvae: ten draws per requested class"))
