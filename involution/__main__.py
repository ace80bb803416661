"""``python -m involution``: the command-line interface.

``python -m`` puts the working directory first on ``sys.path``; it is taken off again here, so that a file an
implementation under test writes into the working directory (``timeit.py``) cannot shadow a module the CLI imports
later. The conformance workers get the working directory on their own path explicitly.
"""
import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402

sys.exit(main())
