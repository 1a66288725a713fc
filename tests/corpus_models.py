"""The acceptance corpus of LANGUAGE.md as text, one model per name, read from examples/
(test_golden keeps those files equal to tests/programs/good/), so tests share one copy."""
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("digits_vae", "digits_cvae", "digits_hvae", "gmm", "linreg", "ppca")
CORPUS = {name: (EXAMPLES / f"{name}.dgm").read_text(encoding="utf-8") for name in NAMES}
