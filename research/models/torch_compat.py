"""Importing torchvision's classification models where its C extension cannot load.

torchvision's wheels are built against one torch build. With another (here: the
CPU build of torch 2.13 next to a torchvision wheel built for CUDA torch), the
C extension `torchvision._C` fails to load, and `import torchvision` then fails
in `torchvision/_meta_registrations.py`, which registers fake kernels for the
extension's operators: `RuntimeError: operator torchvision::nms does not exist`.

The classification models (`torchvision.models.resnet`, `vgg`, ...) are pure
Python and need none of those operators (only detection ops such as `nms` do).
`import_torchvision_models()` imports torchvision normally and, only on that
exact failure, imports it again with `torchvision._meta_registrations` replaced
by an empty module: nothing else is changed, and the detection ops then fail
when called, as they would anyway without the extension. Where torch and
torchvision match, the plain import succeeds and nothing special happens.
"""

from __future__ import annotations

import sys
import types

_MISSING_OPERATOR = "operator torchvision::"  # ... "nms does not exist"


def import_torchvision_models() -> types.ModuleType:
    """`torchvision.models`, importable even when torchvision's C extension is not.

    Raises:
      ImportError: torch or torchvision is not installed.
      RuntimeError: any other failure of `import torchvision` (re-raised as is).
    """
    try:
        import torchvision.models  # optional (requirements-bench.txt), and may fail: see above

        return torchvision.models
    except RuntimeError as err:
        if _MISSING_OPERATOR not in str(err) or "does not exist" not in str(err):
            raise
    # The failed import left a half-initialised package behind: drop it, keep the
    # fake-kernel registrations (the only part that needs the extension) from loading,
    # and import again.
    for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module]
    stub = types.ModuleType("torchvision._meta_registrations")
    stub.__doc__ = "Left empty by research.models.torch_compat: torchvision._C did not load."
    sys.modules["torchvision._meta_registrations"] = stub
    import torchvision.models  # the second try, with the stub in place

    return torchvision.models
