"""``python -m lockmgr``: the lockmgr command."""

import sys

from .cli import main

sys.exit(main())
