"""``python -m minift`` is the ``minift`` command."""

import sys

from minift.run.cli import main

sys.exit(main())
