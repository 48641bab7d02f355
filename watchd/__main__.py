import sys

from watchd.cli import main

sys.exit(main())
