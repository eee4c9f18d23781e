"""``python -m healkit``: the ``healkit`` command line."""

import sys

from healkit._cli import main

sys.exit(main())
