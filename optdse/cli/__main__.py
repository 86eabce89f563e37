"""`python -m optdse.cli`, as the `optdse` script."""

import sys

from optdse.cli import main

if __name__ == "__main__":
    sys.exit(main())
