"""``python -m proxy.cli``: the same as the ``teeproxy`` command."""

import sys

from proxy.cli.main import main

sys.exit(main())
