"""`python -m ctxf.ckpt`: the same as `ctxf-convert`."""

import sys

from ctxf.ckpt.convert_cli import main

sys.exit(main())
