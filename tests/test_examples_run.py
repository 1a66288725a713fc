"""Every example script runs, at tiny scale (--quick), and produces what it promises.

The scripts run in this process (runpy), one after another in a shared output folder, so the
two that use the digits VAE fit it once, as they do at full scale.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))

#: What each script must print and the pictures it must write.
PROMISES = {
    "char_lm": (["bits per character", "sample:"], []),
    "digits_rows": (["test log-likelihood, nats per image: digits_rows", "digits_vae -87.20"], ["digits_rows.png"]),
    "dmm": (["guide plan: [('z', 'structured chain", "fitted dmm with the naive guide",
             "test log-likelihood, nats per image (K = 20): dmm structured guide", "dmm naive guide",
             "digits_vae -87.20", "digits_rows -134.97"], ["dmm.png"]),
    "imitation": (["demonstrations:", "success over 20 fresh starts: learned policy"], ["imitation.png"]),
    "cube": (["shape accuracy", "position error (px)", "colour RMSE", "size error (relative)",
              "cube rotation error (rad)", "nearest neighbour"], ["cube.png"]),
    "digits_cvae": (["of the generated digits as the class they were drawn for"], ["cvae_classes.png"]),
    "digits_hvae": (["guide plan (sampling order, inputs): [('z1', ['x']), ('z2', ['z1'])]",
                     "test log-likelihood"], ["hvae_samples.png"]),
    "gmm": (["learned (matched)", "most probable cluster"], ["gmm.png"]),
    "hmm": (["learned (relabeled)", "most probable state is the true state"], ["hmm.png"]),
    "inpainting": (["bottom half:", "random 50%:", "of mean imputation"],
                   ["inpainting_bottom.png", "inpainting_random.png"]),
    "inverse_graphics": (["|error| of posterior mean", "brightness"], ["inverse_graphics.png"]),
    "linreg": (["exact mean", "fitted mean"], []),
    "outlier_detection": (["ROC AUC against clean digits", "all corruptions together: ROC AUC"],
                          ["outlier_scores.png", "outlier_examples.png"]),
    "ppca": (["posterior mean of z", "x[2] filled in"], []),
    "semi_supervised": (["test accuracy", "labels: mean test accuracy", "baseline on the labelled rows alone"], []),
    "superres": (["bilinear upsampling"], ["superres.png"]),
    "colourise": (["grey copied into R, G, B", "china.jpg, held out"], ["colourise.png"]),
}


def test_every_script_has_its_promises_listed():
    assert sorted(p.stem for p in SCRIPTS) == sorted(PROMISES)


def test_every_new_model_file_is_used_by_a_script():
    used = " ".join(p.read_text() for p in SCRIPTS)
    for model_file in EXAMPLES.glob("*.dgm"):
        assert model_file.name in used, f"no example script uses {model_file.name}"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


# --quick trains a fraction of each example's length: a DGMWarning about a guide that has
# not learned its posterior yet is right there (at full length none warns: docs/inference.md)
@pytest.mark.filterwarnings("ignore::dgmlang.errors.DGMWarning")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs_quickly(script, out, monkeypatch, capsys):
    assert (script.read_text().startswith('"""')), f"{script.name} starts with no explanation"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", str(out)])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    phrases, pictures = PROMISES[script.stem]
    for phrase in phrases:
        assert phrase in printed, f"{script.name} did not print {phrase!r}:\n{printed}"
    for picture in pictures:
        assert (out / picture).stat().st_size > 2000, picture
