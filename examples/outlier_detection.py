"""Outlier detection: a generative model knows what its data looks like.

Fit `digits_vae.dgm` on the training digits, then score images by their log-likelihood
log p(x) (`model.log_prob`, importance-weighted with the derived guide as the proposal). Clean
test digits should score high; corrupted ones low. Three corruptions of the test set:

* noise    - a third of the pixels replaced by random counts 0..16;
* flipped  - the image turned upside down;
* shuffled - the pixels of each image randomly permuted.

Reports the ROC AUC of "low log-likelihood means outlier" for each corruption (1.0 is
perfect, 0.5 is chance) and writes a histogram of the scores.

    python examples/outlier_detection.py            # full scale (200 epochs)
    python examples/outlier_detection.py --quick
"""
import numpy as np
import torch
from _common import dgmlang, fitted, options, wrote
from sklearn.metrics import roc_auc_score

from dgmlang.plots import image_grid, score_histogram

args = options(__doc__.splitlines()[0], epochs=200)
digits = dgmlang.datasets.digits()
train_x, test_x = digits.train_x, digits.test_x
if args.quick:
    train_x, test_x = train_x[:256], test_x[:24]
model = fitted("digits_vae.dgm", {"x": train_x}, args)

rng = np.random.default_rng(args.seed)
clean = test_x.numpy()
noisy = clean.copy()
replace = rng.random(noisy.shape) < 1 / 3
noisy[replace] = rng.integers(0, 17, size=int(replace.sum()))
flipped = clean.reshape(-1, 8, 8)[:, ::-1, :].reshape(-1, 64).copy()
shuffled = np.stack([row[rng.permutation(64)] for row in clean])
corrupted = {"noise": noisy, "flipped": flipped, "shuffled": shuffled}

samples = 20 if args.quick else 500
score = lambda x: model.log_prob({"x": torch.as_tensor(x)}, num_samples=samples, seed=args.seed).numpy()
clean_scores = score(clean)
print(f"clean test digits: mean log-likelihood {clean_scores.mean():.1f} nats")
all_scores, all_labels = [clean_scores], [np.zeros(len(clean))]
groups = {"clean test digits": clean_scores}
for name, images in corrupted.items():
    scores = score(images)
    labels = np.r_[np.zeros(len(clean)), np.ones(len(images))]
    auc = roc_auc_score(labels, -np.r_[clean_scores, scores])
    print(f"{name:>9}: mean log-likelihood {scores.mean():8.1f}; ROC AUC against clean digits {auc:.3f}")
    groups[name] = scores
    all_scores.append(scores)
    all_labels.append(np.ones(len(images)))
overall = roc_auc_score(np.concatenate(all_labels), -np.concatenate(all_scores))
print(f"all corruptions together: ROC AUC {overall:.3f}")

wrote(score_histogram(groups, args.out / "outlier_scores.png", log_scale=True))
examples = np.concatenate([images[:6] for images in (clean, *corrupted.values())])
wrote(image_grid(examples, args.out / "outlier_examples.png", shape=(8, 8), ncols=6, vmax=16,
                 row_labels=["clean", *corrupted], title="test digits and their corruptions"))
