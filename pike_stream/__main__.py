import sys

from pike_stream.cli import main

sys.exit(main())
