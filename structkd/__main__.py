import sys

from structkd.cli import main

sys.exit(main())
