"""``python -m medsyn`` (also what ``torchrun -m medsyn train CONFIG`` runs)."""

import sys

from medsyn.cli.main import main

sys.exit(main())
