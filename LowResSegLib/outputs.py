"""Where results go: output paths checked before any work, then written by format.

Checking first means a bad path fails in a second, not after a minute of inference,
and that a failed run writes nothing (every writer is atomic).
"""

import os

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def check_output_path(path, overwrite=False, suffixes=None):
    """Raise a clear error if ``path`` cannot be written; nothing is created here."""
    path = os.path.abspath(path)
    low = path.lower()
    if suffixes and not low.endswith(tuple(suffixes)):
        raise ValueError("output %s: use one of %s" % (path, ", ".join(suffixes)))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError("output folder %s does not exist (or is not a folder); create it first" % parent)
    if not os.access(parent, os.W_OK):
        raise PermissionError("output folder %s is not writable; choose another --output" % parent)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError("%s already exists; pass --overwrite to replace it" % path)
    return path


def write_segmentation(seg, path, overwrite=False):
    """Labels of a :class:`~LowResSegLib.pipeline.Segmentation` as NIfTI/NRRD/MHA or Slicer .seg.nrrd."""
    from LowResSegLib.io import write_labels, write_seg_nrrd

    if path.lower().endswith(".seg.nrrd"):
        write_seg_nrrd(seg.labels, seg.reference, path, seg.card["classes"], overwrite=overwrite)
    else:
        write_labels(seg.labels, seg.reference, path, overwrite=overwrite)
    return path
