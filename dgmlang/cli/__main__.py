"""`python -m dgmlang.cli ...` runs the `dgm` command (as `python -m dgmlang` does)."""
import sys

from dgmlang.cli import main

if __name__ == "__main__":  # pragma: no branch
    sys.exit(main())
