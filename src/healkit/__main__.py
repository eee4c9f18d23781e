"""``python -m healkit``: the ``healkit`` command line."""

import sys

from healkit._cli.entry import main

sys.exit(main())
