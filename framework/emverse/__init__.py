"""emverse: inverse problems in electron microscopy and diffraction.

This package is deliberately light to import: the registry, recipes and CLI
never import torch. The torch-based interfaces live in :mod:`emverse.interfaces`.
"""

__version__ = "0.1.0"
