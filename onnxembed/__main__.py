"""``python -m onnxembed``: the same as the ``onnxembed`` command."""

import sys

from onnxembed.cli import main

sys.exit(main())
