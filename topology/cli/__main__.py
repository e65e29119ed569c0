"""`python -m topology.cli`: how the local stack starts its worker and analytics processes."""

import sys

from topology.cli import main

sys.exit(main())
