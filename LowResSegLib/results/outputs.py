"""Where results go: output paths checked before any work, then written by format.

Checking first means a bad path fails in a second, not after a minute of inference,
and that a failed run writes nothing (every writer is atomic).
"""

import contextlib
import os
import shutil
import tempfile

# single-file formats only: a detached header (.nhdr/.mhd) cannot be written atomically
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


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


@contextlib.contextmanager
def staged_folder(final):
    """Yield a hidden sibling folder to fill; on success it replaces ``final`` whole, on error it vanishes.

    A folder of outputs (a demo run, an exported model) then appears complete or not at all.
    """
    parent = os.path.dirname(os.path.abspath(final)) or "."
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(final) + ".part-", dir=parent)
    try:
        yield staging
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def labels_on_grid(labels, label_affine, volume):
    """A reference label volume on ``volume``'s voxel grid, or a clear error.

    The same world grid stored in another axis order (e.g. a RAS NIfTI label for an
    LPS NRRD image) is reoriented; any other grid is refused, never compared blindly.
    """
    import numpy as np

    from LowResSegLib.images.geometry import from_canonical, to_canonical

    if labels.shape == volume.shape and np.allclose(label_affine, volume.affine, atol=1e-3):
        return labels
    canon_l, aff_l = to_canonical(labels, label_affine)
    canon_v, aff_v = to_canonical(np.zeros(volume.shape, np.uint8), volume.affine)
    if canon_l.shape == canon_v.shape and np.allclose(aff_l, aff_v, atol=1e-3):
        return from_canonical(canon_l, volume.affine)
    raise ValueError("the reference label is not on the image's voxel grid (shape %s vs %s, or a different "
                     "position/spacing); resample it onto the image first" % (labels.shape, volume.shape))


def write_segmentation(seg, path, overwrite=False, target=None):
    """Labels of a :class:`~LowResSegLib.inference.pipeline.Segmentation` as NIfTI/NRRD/MHA or Slicer .seg.nrrd.

    Verified and atomic (:func:`LowResSegLib.images.io.atomic_write`); ``target``: the name errors give
    when ``path`` is a staging file.
    """
    from LowResSegLib.images.io import write_labels, write_seg_nrrd

    if path.lower().endswith(".seg.nrrd"):
        write_seg_nrrd(seg.labels, seg.reference, path, seg.card["classes"], overwrite=overwrite, target=target)
    else:
        write_labels(seg.labels, seg.reference, path, overwrite=overwrite, target=target)
    return path
