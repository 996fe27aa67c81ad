"""The LGG ``kaggle_3m`` layout (Buda, Saha & Mazurowski 2019), read as users download it.

Layout: ``kaggle_3m/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<n>.tif`` (RGB: pre-contrast,
FLAIR, post-contrast; a missing sequence is replaced by the FLAIR) and ``..._<n>_mask.tif``
(one channel, 0/255), n = 1, 2, ... Each patient becomes one :class:`sources.Case`: channel 1
(FLAIR) of its slices stacked in slice-number order, label = mask > 0.

The TIFFs carry no geometry, so every patient gets the same nominal one, :data:`NOMINAL_SPACING_MM`:

* in plane 0.9375 mm (≈ 0.94): the TCGA-LGG FLAIRs are 256² matrices over a ~24 cm head
  field of view, the usual clinical protocol, so 240 mm / 256;
* 5 mm between slices: the typical thickness of these clinical axial FLAIRs (most patients
  have 20-40 slices over the head). Slices are 2-D training samples here, so the slice
  distance only matters to the normalisation's 3-D smoothing and 10 mm core (a slice or two)
  and to tumour volumes in mL, which are nominal for this set.
* orientation: rows run anterior -> posterior and columns right -> left (radiological display,
  as the slices are stored), slice numbers inferior -> superior.

Institution CS (``TCGA_CS_*``) is reserved for independent evaluation: its folders are skipped
by name, before anything in them is listed or read.
"""

import hashlib
import os
import re

import numpy as np

#: (i, j, k) voxel size in mm given to every patient (the TIFFs have none; see the module doc).
NOMINAL_SPACING_MM = (0.9375, 0.9375, 5.0)

#: Patients of this institution are reserved for independent evaluation: never read, listed or trained on.
RESERVED_PREFIX = "TCGA_CS_"

FLAIR_CHANNEL = 1

_PATIENT = re.compile(r"^TCGA_([A-Z0-9]+)_([A-Z0-9]+)_(\d+)$")
_LAYOUT = ("expected <folder>/TCGA_<inst>_<id>_<date>/TCGA_<inst>_<id>_<date>_<n>.tif with a "
           "..._<n>_mask.tif next to each (the kaggle_3m folder of the LGG segmentation set)")


class LayoutError(ValueError):
    """A folder or file is not as in kaggle_3m; the message names it and says what was expected."""


def is_reserved(name):
    """True for a patient (folder or file name) of the reserved institution."""
    return os.path.basename(os.fspath(name)).startswith(RESERVED_PREFIX)


def institution(patient):
    """'DU' for 'TCGA_DU_5849_19950405'."""
    match = _PATIENT.match(patient)
    if not match:
        raise LayoutError("%r is not a kaggle_3m patient folder name: %s" % (patient, _LAYOUT))
    return match.group(1)


def slice_file_names(patient, n_slices):
    """The file names of a patient with ``n_slices`` slices: image and mask of 1..n, sorted by name."""
    return sorted(name for n in range(1, n_slices + 1)
                  for name in ("%s_%d.tif" % (patient, n), "%s_%d_mask.tif" % (patient, n)))


def patient_folders(root):
    """Sorted paths of the (non-reserved) patient folders of a kaggle_3m folder.

    Fails with :class:`LayoutError` when ``root`` holds no patient folder, or when one of its
    sub-folders is not named like one.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError("LGG folder not found: %s (%s)" % (root, _LAYOUT))
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith("."))
    found, reserved = [], 0
    for name in names:
        if is_reserved(name):
            reserved += 1
            continue
        if not _PATIENT.match(name):
            hint = " (did you mean %s?)" % os.path.join(root, name) if name == "kaggle_3m" else ""
            raise LayoutError("%s is not a kaggle_3m patient folder%s: %s" % (os.path.join(root, name), hint, _LAYOUT))
        found.append(os.path.join(root, name))
    if not found:
        what = "only reserved %s* patients" % RESERVED_PREFIX if reserved else "no patient folder"
        raise LayoutError("%s holds %s: %s" % (root, what, _LAYOUT))
    return found


def slice_files(folder):
    """[(n, image path, mask path)] of a patient folder in slice order, checked against the layout.

    Errors name the file: one not named like the folder's slices, a mask without its image or
    an image without its mask, and a gap in the slice numbers (which must run 1, 2, ..., N).
    """
    folder = os.path.abspath(os.fspath(folder))
    patient = os.path.basename(folder)
    if is_reserved(patient):
        raise LayoutError("%s is a reserved patient (%s*): it is kept for independent evaluation and never read"
                          % (folder, RESERVED_PREFIX))
    if not _PATIENT.match(patient):
        raise LayoutError("%s is not a kaggle_3m patient folder: %s" % (folder, _LAYOUT))
    pattern = re.compile(r"^%s_(\d+)(_mask)?\.tif$" % re.escape(patient))
    images, masks = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):  # .DS_Store, macOS '._' files
            continue
        match = pattern.match(name)
        if not match:
            raise LayoutError("%s: unexpected file; a patient folder holds only %s_<n>.tif and %s_<n>_mask.tif"
                              % (os.path.join(folder, name), patient, patient))
        (masks if match.group(2) else images)[int(match.group(1))] = os.path.join(folder, name)
    for n in sorted(set(masks) - set(images)):
        raise LayoutError("%s: extra mask, there is no image %s_%d.tif next to it" % (masks[n], patient, n))
    for n in sorted(set(images) - set(masks)):
        raise LayoutError("%s: missing mask %s_%d_mask.tif" % (images[n], patient, n))
    if not images:
        raise LayoutError("%s holds no slices: %s" % (folder, _LAYOUT))
    for n in range(1, max(images) + 1):
        if n not in images:
            raise LayoutError("%s: gap in slice numbers, %s_%d.tif (and its mask) is missing; slices run 1..%d"
                              % (folder, patient, n, max(images)))
    return [(n, images[n], masks[n]) for n in sorted(images)]


def _read_tiff(path, what):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            bands = im.getbands()
            array = np.asarray(im)
    except OSError as exc:
        raise LayoutError("%s: could not be read as a TIFF image (%s)" % (path, exc)) from exc
    if what == "image" and bands != ("R", "G", "B"):
        raise LayoutError("%s: a %s image (%d channel(s)), not RGB; kaggle_3m images are RGB with the FLAIR "
                          "in channel %d" % (path, im.mode, len(bands), FLAIR_CHANNEL))
    if what == "mask" and len(bands) != 1:
        raise LayoutError("%s: a %d-channel mask; kaggle_3m masks have one channel (0 / 255)" % (path, len(bands)))
    return array


def nominal_affine(shape_kji):
    """IJK -> LPS affine of the nominal geometry, centred on the volume (see the module doc)."""
    affine = np.diag(list(NOMINAL_SPACING_MM) + [1.0])
    # i: columns, patient right -> left (+L); j: rows, anterior -> posterior (+P); k: inferior -> superior (+S)
    affine[:3, 3] = -0.5 * (np.array(shape_kji[::-1], np.float64) - 1) * np.array(NOMINAL_SPACING_MM)
    return affine


def read_patient(folder):
    """One patient as a ``sources.Case``: FLAIR (k, j, i) float32, label = mask > 0, nominal affine."""
    from LowResSegLib.training.sources import Case

    images, labels, shape = [], [], None
    for _, image_path, mask_path in slice_files(folder):
        image = _read_tiff(image_path, "image")[..., FLAIR_CHANNEL]
        mask = _read_tiff(mask_path, "mask")
        if shape is None:
            shape = image.shape
        if image.shape != shape:
            raise LayoutError("%s: size %dx%d, the patient's first slice is %dx%d; every slice of a patient "
                              "has one size" % ((image_path,) + image.shape[::-1] + shape[::-1]))
        if mask.shape != image.shape:
            raise LayoutError("%s: size %dx%d, its image is %dx%d"
                              % ((mask_path,) + mask.shape[::-1] + image.shape[::-1]))
        images.append(image)
        labels.append(mask > 0)
    image = np.stack(images).astype(np.float32)
    return Case(case_id=os.path.basename(os.path.abspath(folder)), image=image,
                label=np.stack(labels).astype(np.uint8), affine=nominal_affine(image.shape))


def iter_kaggle3m_cases(root, limit=None):
    """Cases of every non-reserved patient of a kaggle_3m folder, in name order (layout checked up front)."""
    folders = patient_folders(root)[:limit]
    for folder in folders:
        slice_files(folder)
    return (read_patient(folder) for folder in folders)


def files_digest(named_bytes):
    """sha256 over (name, sha256 of content) of every file, in name order: one digest per patient."""
    h = hashlib.sha256()
    for name, data in sorted(named_bytes):
        h.update(("%s %s\n" % (name, hashlib.sha256(data).hexdigest())).encode())
    return h.hexdigest()


def folder_digest(folder, names):
    """:func:`files_digest` of the files ``names`` of a folder (a missing one raises FileNotFoundError)."""
    out = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            out.append((name, f.read()))
    return files_digest(out)
