import sys

from fracsight.cli import main

sys.exit(main())
