"""`python -m musicgen_local ...`: the CLI where the package is not installed, as in the Cog image (/src)."""

import sys

from .cli import main

sys.exit(main())
