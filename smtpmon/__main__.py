import sys

from smtpmon.cli import main

sys.exit(main())
