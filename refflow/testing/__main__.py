"""``python -m refflow.testing MODULE:FACTORY [--dim D] [--n N]``: ``refflow verify``."""

import sys

from refflow.testing.verify import verify_main

if __name__ == "__main__":
    raise SystemExit(verify_main(sys.argv[1:]))
