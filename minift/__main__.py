"""``python -m minift`` is the ``minift`` command."""

import sys

from minift.cli import main

sys.exit(main())
