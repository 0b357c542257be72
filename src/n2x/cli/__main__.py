"""``python -m n2x.cli``: the same as the ``n2x`` command."""
import sys

from . import main

sys.exit(main())
