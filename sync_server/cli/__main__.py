"""``python -m sync_server.cli``: the same as the ``vatra`` command."""

import sys

from sync_server.cli import main

sys.exit(main())
