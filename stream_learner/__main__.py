"""``python -m stream_learner``: the command line (see `stream_learner.cli`)."""

import sys

from stream_learner.cli import main

sys.exit(main())
