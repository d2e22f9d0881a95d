import sys

from shared.kit.audit.cli import main

sys.exit(main())
