"""`python -m common COMMAND ...`: the same as `accel-ports COMMAND ...` (common/console.py)."""
import sys

from common.console import main

sys.exit(main())
