"""Multimodal (CT + EHR) survival prediction core. Never imports streamlit.

Heavy dependencies (torch, captum, monai) are imported lazily inside the
modules that need them so that light commands such as ``inspect`` start fast.
"""

__version__ = "0.1.0"
