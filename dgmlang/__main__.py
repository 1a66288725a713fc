"""`python -m dgmlang ...` runs the `dgm` command."""
import sys

from dgmlang.cli import main

if __name__ == "__main__":  # pragma: no branch
    sys.exit(main())
