"""The package installs: a wheel built from the checkout, installed into a fresh virtual
environment outside it, runs `dgm` on the examples and imports `dgmlang.testing`.

The new environment reuses the installed dependencies (torch, pyro, lark, ...) rather than
downloading them: it sees the system site-packages (`--system-site-packages`) and, when the
tests run in a virtual environment, that environment's site-packages through a `.pth` line.
A `.pth` line only adds a folder to `sys.path`; the `.pth` files inside that folder (an
editable install's finder among them) are not run, so the checkout's `dgmlang` stays out.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import dgmlang

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.dgm"))


def test_the_grammar_sits_at_the_repository_root_and_nowhere_in_the_package():
    from dgmlang.parse import grammar_text

    grammar = ROOT / "grammar" / "dgm.lark"
    assert grammar.is_file()
    assert not (ROOT / "dgmlang" / "grammar").exists()
    assert list((ROOT / "dgmlang").rglob("*.lark")) == []
    assert grammar_text() == grammar.read_text(encoding="utf-8")


def _run(command: list, *, cwd: Path, env: dict, timeout: float = 120) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env(extra_path: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the build leaves nothing (build/, egg-info) in the
    checkout. The copy holds the top-level files and the folders that go into the wheel."""
    source = tmp / "source"
    source.mkdir()
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, source / path.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("dgmlang", "grammar"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", wheels, source], cwd=tmp, env=_clean_env())
    (wheel,) = wheels.glob("dgmlang-*.whl")
    return wheel


def _packages_in(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {str(Path(name).parent).replace("/", ".") for name in archive.namelist()
                if name.endswith("/__init__.py")}


def _site_folders() -> list[str]:
    """The site-packages folders the tests run with, those a .pth file added included (the
    checkout itself, on sys.path under pytest or through an editable install, is not one)."""
    folders = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], *sys.path]
    return [folder for folder in dict.fromkeys(folders)
            if Path(folder).name in ("site-packages", "dist-packages") and Path(folder).is_dir()]


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A virtual environment with the wheel installed (no dependencies) and, after the install,
    the running interpreter's site-packages visible through a .pth line."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv], cwd=tmp,
         env=_clean_env())
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
          wheel], cwd=tmp, env=_clean_env())
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp, env=_clean_env()).strip())
    (purelib / "_dgmlang_test_dependencies.pth").write_text("".join(f"{folder}\n" for folder in _site_folders()))
    return venv


@pytest.mark.skipif(sys.platform == "win32", reason="the venv layout below is POSIX")
def test_the_built_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    package_folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dgmlang").rglob("__init__.py")
                       if "__pycache__" not in p.parts}
    assert _packages_in(wheel) == package_folders | {"dgmlang.grammar"}
    with zipfile.ZipFile(wheel) as archive:
        assert {"dgmlang/grammar/dgm.lark", "dgmlang/py.typed", "dgmlang/__main__.py"} <= set(archive.namelist())

    venv = _fresh_venv(tmp_path, wheel)
    bin_ = venv / "bin"
    work = tmp_path / "work"
    work.mkdir()
    for example in EXAMPLES:
        shutil.copy2(example, work / example.name)
    env = _clean_env(bin_)

    version = f"dgm {dgmlang.__version__}\n"
    assert _run([bin_ / "dgm", "--version"], cwd=work, env=env) == version
    assert _run([bin_ / "python", "-m", "dgmlang", "--version"], cwd=work, env=env) == version
    checked = _run([bin_ / "dgm", "check", *sorted(p.name for p in work.glob("*.dgm"))], cwd=work, env=env)
    assert len(checked.splitlines()) >= len(EXAMPLES) and len(EXAMPLES) > 0
    location = _run([bin_ / "python", "-c",
                     "import dgmlang, dgmlang.testing, dgmlang.parse as p; "
                     "print(dgmlang.__file__); print(dgmlang.testing.__file__); "
                     "print(len(p.grammar_text()) > 0)"], cwd=work, env=env).splitlines()
    assert location[2] == "True"
    for module_file in location[:2]:
        assert Path(module_file).resolve().is_relative_to(venv.resolve()), module_file
        assert not Path(module_file).resolve().is_relative_to(ROOT), module_file
