"""Built-in data sets: scikit-learn's 8x8 handwritten digits, split the same way everywhere.

`digits()` returns the 1,797 images of `sklearn.datasets.load_digits` (shipped with scikit-learn,
no download) as counts 0..16 per pixel, with their labels. The split is fixed, not random: the
test set is every image whose index is a multiple of 5 (360 images), the training set the rest
(1,437), so figures quoted in the docs and benchmarks are reproducible on any machine.

>>> d = digits()
>>> tuple(d.train_x.shape), tuple(d.test_x.shape)
((1437, 64), (360, 64))
>>> float(d.train_x.min()), float(d.train_x.max()), d.train_x.dtype, d.train_y.dtype
(0.0, 16.0, torch.float32, torch.int64)
>>> sorted(d.as_dict("test"))
['x', 'y']
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from dgmlang.errors import DGMDataError

if TYPE_CHECKING:  # torch is imported lazily so `import dgmlang` stays light
    import torch

#: Every image whose index is a multiple of this goes to the test set.
TEST_EVERY = 5
#: The largest pixel value: each pixel counts 16 sub-pixels (the `total_count` of a Binomial).
MAX_COUNT = 16
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Digits:
    """The 8x8 digits as flattened pixel counts (float32, 0..16) and labels (int64, 0..9).

    >>> d = digits()
    >>> d.as_dict("train")["x"].shape
    torch.Size([1437, 64])
    >>> d.as_dict("validation")
    Traceback (most recent call last):
    ...
    dgmlang.errors.DGMDataError: unknown split 'validation'
        hint: the digits have the splits 'train' and 'test'
    """

    train_x: "torch.Tensor"
    train_y: "torch.Tensor"
    test_x: "torch.Tensor"
    test_y: "torch.Tensor"

    def as_dict(self, split: str = "train") -> dict[str, "torch.Tensor"]:
        """The images and labels of one split as ``{"x": images, "y": labels}``, ready for `fit`.

        A model that only has ``data x[64]`` takes ``{"x": d.as_dict("train")["x"]}``;
        a conditional model with ``input y`` takes the whole dict.
        """
        if split not in SPLITS:
            raise DGMDataError(
                f"unknown split {split!r}",
                hint="the digits have the splits " + " and ".join(repr(s) for s in SPLITS),
            )
        if split == "train":
            return {"x": self.train_x, "y": self.train_y}
        return {"x": self.test_x, "y": self.test_y}


def digits() -> Digits:
    """Load scikit-learn's digits with the fixed split (test: index % 5 == 0).

    The tensors are fresh copies on every call, so a caller may modify them freely.

    >>> d = digits()
    >>> d.test_y[:5].tolist()  # images 0, 5, 10, 15, 20
    [0, 5, 0, 5, 0]
    """
    import torch

    images, labels = _load_arrays()
    x = torch.from_numpy(images.copy())  # the cached arrays are read-only; tensors must not share them
    y = torch.from_numpy(labels.copy())
    is_test = torch.arange(len(y)) % TEST_EVERY == 0
    return Digits(train_x=x[~is_test], train_y=y[~is_test], test_x=x[is_test], test_y=y[is_test])


def _read_digits_file():
    """scikit-learn's digits.csv.gz (pixels, then the label, per row) read without importing
    scikit-learn, which takes most of a second and is all `dgm invert --truth digits` and
    `make demo` would need it for; None where the file is not where scikit-learn keeps it."""
    import gzip
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as lines:
        return np.loadtxt(lines, delimiter=",")


@lru_cache(maxsize=1)
def _load_arrays():
    """The raw (1797, 64) images and (1797,) labels, read once per process."""
    import numpy as np

    table = _read_digits_file()
    if table is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        table = np.column_stack([bunch.data, bunch.target])
    images = np.asarray(table[:, :-1], dtype=np.float32)
    labels = np.asarray(table[:, -1], dtype=np.int64)
    # scikit-learn stores whole counts as floats; rounding guards against any stored 15.999...
    images = np.rint(images)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


#: The characters `pydoc_text` keeps as themselves: tab, newline and printable ASCII (97);
#: every other character is code 97, "other" (so 98 codes in all).
CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
#: The fraction of the text, at its end, that `pydoc_text` holds out.
HELD_OUT = 0.05


@dataclass(frozen=True)
class Text:
    """A text cut into sequences of character codes (int64, 0..97; see `CHARS`): `train`
    and `test` ``(n, steps)``, and `decode` to read codes back."""

    train: "torch.Tensor"
    test: "torch.Tensor"

    @staticmethod
    def decode(codes) -> str:
        return "".join(CHARS[int(c)] if int(c) < len(CHARS) else "\N{REPLACEMENT CHARACTER}" for c in codes)


def pydoc_text(steps: int) -> Text:
    """The text of `pydoc_data.topics` (shipped with CPython: the topics of `help()`, about
    465,000 characters), its values joined in sorted key order, as character codes cut into
    sequences of `steps`: the first 95% for training, the last 5% held out (each part's
    last partial sequence dropped).

    >>> text = pydoc_text(64)
    >>> tuple(text.train.shape), tuple(text.test.shape)
    ((6901, 64), (363, 64))
    >>> Text.decode(text.train[0, :12])
    'The "assert"'
    """
    import torch
    from pydoc_data.topics import topics

    whole = "".join(topics[key] for key in sorted(topics))
    index = {c: i for i, c in enumerate(CHARS)}
    codes = torch.tensor([index.get(c, len(CHARS)) for c in whole], dtype=torch.int64)
    cut = int(len(codes) * (1 - HELD_OUT))

    def sequences(part: "torch.Tensor") -> "torch.Tensor":
        return part[: len(part) // steps * steps].reshape(-1, steps)

    return Text(sequences(codes[:cut]), sequences(codes[cut:]))
