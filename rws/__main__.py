import sys

from rws.cli import main

sys.exit(main())
