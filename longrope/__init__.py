"""longrope: extend the context window of pretrained RoPE language models (LongRoPE and peers).

Importing the package is cheap: only torch-based math loads here; transformers, plotting
and data libraries load where they are used.
"""
from .factors import RopeExtension
from .rope import RotarySpec
from .version import __version__

__all__ = ["RopeExtension", "RotarySpec", "__version__"]
