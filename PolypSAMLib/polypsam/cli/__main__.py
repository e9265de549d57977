"""``python -m polypsam.cli``."""

import sys

from . import main

sys.exit(main())
