"""LowResSeg: low-resolution-input tumour segmentation with a learned upsampling head.

Kept tiny and Python 3.6-importable: the Jetson edge server imports this package,
so nothing heavy (torch, SimpleITK) may be imported here.
"""

__version__ = "0.1.0"
