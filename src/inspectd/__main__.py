import sys

from inspectd.cli import main

sys.exit(main())
