"""Entry point of `python -m verifier` (see verifier/cli/main.py)."""

import sys

from verifier.cli.main import main

sys.exit(main())
