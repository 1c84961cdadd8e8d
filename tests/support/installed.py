"""The installed command: this venv's bin folder and the ``flowrun`` console script in it.

End-to-end tests run ``FLOWRUN`` in a subprocess, as a user would.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
FLOWRUN = shutil.which("flowrun", path=str(BIN)) or "flowrun"
