import sys

from ncfctl.cli import main

sys.exit(main())
