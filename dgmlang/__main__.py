"""`python -m dgmlang ...` runs the `dgm` command."""
from dgmlang.cli import run

if __name__ == "__main__":  # pragma: no branch
    run()
