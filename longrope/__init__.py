"""longrope: extend the context window of pretrained RoPE language models (LongRoPE and peers).

Importing the package is cheap: only torch-based math loads here; transformers, plotting
and data libraries load where they are used.
"""
from .factors import RopeExtension
from .rope import RotarySpec

__version__ = "0.1.0"
__all__ = ["RopeExtension", "RotarySpec", "__version__"]
