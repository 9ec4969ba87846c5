import sys

from ceag.app.cli import main

sys.exit(main())
