"""Models: plain ``nn.Module`` classes with no training logic."""

from torchmf.nn.mf import MFModel

__all__ = ["MFModel"]
