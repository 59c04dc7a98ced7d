"""``python -m raresynth``: the same as the ``raresynth`` command."""

import sys

from .cli import main

sys.exit(main())
