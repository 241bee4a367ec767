"""`python -m llm_energy.measure`: measure one cell (see `llm_energy.measure.child`)."""

import sys

from llm_energy.measure.child import main

sys.exit(main())
