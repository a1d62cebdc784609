"""`python -m agent.schema --write DIR | --check DIR`."""

import sys

from agent.schema.files import main

sys.exit(main())
