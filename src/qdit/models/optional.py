"""Optional dependencies of the model loaders, imported only when needed."""

from __future__ import annotations

from typing import Any

from qdit.errors import QditError

INSTALL_HINT = "diffusers is not installed; install it with: pip install 'qdit[diffusers]'"


def import_diffusers() -> Any:
    """The ``diffusers`` module, or a one-line error saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise QditError(INSTALL_HINT) from None
    return diffusers
