"""Rebuild the real-DICOM test corpus in this folder from its public sources (see README.md).

    python Testing/data/dicom/make_corpus.py CANON_61_CHECKOUT

CANON_61_CHECKOUT is a checkout (or `git archive` export) of neurolabusc/dcm_qa_canon_61 at
the commit recorded in corpus.json. Each series is cut down to stay small, and nothing else
is changed: frames or files are dropped whole, every image is cropped to its top-left
CROP x CROP pixels (so ImagePositionPatient, which names the top-left pixel, stays true), and
private tags are removed. UIDs, orientation, spacing and all public attributes stay as the
scanner wrote them.
"""

import copy
import gzip
import json
import os
import sys

import numpy as np
import pydicom

HERE = os.path.dirname(os.path.abspath(__file__))
CROP = 16
VOLUMES_ENHANCED = 3  # of 13 diffusion volumes (b = 0, then b = 1500 x 12) in one enhanced file
VOLUMES_CLASSIC = 2  # of the same 13, exported as one file per slice
SLICES = 40


def _read_gz(path):
    with gzip.open(path, "rb") as f:
        return pydicom.dcmread(f)


def _crop(ds, frames):
    ds.remove_private_tags()
    arr = ds.pixel_array.reshape((-1, ds.Rows, ds.Columns))[frames, :CROP, :CROP]
    ds.Rows, ds.Columns = CROP, CROP
    ds.PixelData = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    if "NumberOfFrames" in ds:
        ds.NumberOfFrames = len(frames)
    return ds


def main(src):
    enh = _read_gz(os.path.join(src, "In", "enh", "8000.dcm.gz"))
    keep = list(range(VOLUMES_ENHANCED * SLICES))
    enh.PerFrameFunctionalGroupsSequence = pydicom.Sequence(
        [copy.deepcopy(enh.PerFrameFunctionalGroupsSequence[f]) for f in keep])
    _crop(enh, keep)
    out = os.path.join(HERE, "canon_enhanced_dti")
    os.makedirs(out, exist_ok=True)
    enh.save_as(os.path.join(out, "8000_3vol_crop16.dcm"), enforce_file_format=True)

    out = os.path.join(HERE, "canon_classic_dti")
    os.makedirs(out, exist_ok=True)
    for n in range(1, VOLUMES_CLASSIC * SLICES + 1):
        ds = _crop(_read_gz(os.path.join(src, "In", "cl", "8000_%03d.dcm.gz" % n)), [0])
        ds.save_as(os.path.join(out, "8000_%03d.dcm" % n), enforce_file_format=True)
    print("corpus written to", HERE)


if __name__ == "__main__":
    main(sys.argv[1])
