"""Makes `import research` load the checkout this script lives in.

`python scripts/x.py` puts `scripts/` on `sys.path`, not the repository root,
so without this an installed `research` (another checkout's editable install,
say) would be imported instead of the code next to the script. Every script
imports this module first.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
