import sys

from watchd.service.cli import main

sys.exit(main())
