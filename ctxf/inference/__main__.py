import sys

from ctxf.inference.cli import main

sys.exit(main())
