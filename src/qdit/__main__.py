import sys

from qdit.cli import main

sys.exit(main())
