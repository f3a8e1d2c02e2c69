"""``python -m flowforge`` (and ``torchrun -m flowforge``) is the ``flowforge`` command."""

import sys

from flowforge.cli import main

sys.exit(main())
