"""Entry point of `python -m verifier` (see verifier/cli.py)."""

import sys

from verifier.cli import main

sys.exit(main())
