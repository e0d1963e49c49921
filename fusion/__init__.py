"""Fusion Explorer's library: multimodal fusion methods, their traces and measured compute.

No Streamlit import anywhere in this package; pages call into it.
"""

__all__ = ["types", "registry"]
