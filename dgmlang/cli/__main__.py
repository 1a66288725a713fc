"""`python -m dgmlang.cli ...` runs the `dgm` command (as `python -m dgmlang` does)."""
from dgmlang.cli import run

if __name__ == "__main__":  # pragma: no branch
    run()
