"""What a segmentation writes: label files and Slicer ``.seg.nrrd`` (``outputs``) and DICOM-SEG
(``dicomseg``, via highdicom), each checked before it is written and written all or nothing.

May import :mod:`LowResSegLib.images` only.
"""
