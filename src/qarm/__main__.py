import sys

from qarm.cli import main

sys.exit(main())
