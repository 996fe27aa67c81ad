"""Writes the bundled demo sample (Resources/SampleData/) with our phantom generator.

    python scripts/make_sample.py

A thick-slice phantom (1 mm in-plane, 3-5 mm slices) keeps the file small; stored as int16 NIfTI.
"""

import os
import sys

import numpy as np
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from LowResSegLib.training.phantom import MNI_NOTICE, make_phantom  # noqa: E402

SEED, INDEX = 2024, 0


def main():
    out = os.path.join(ROOT, "Resources", "SampleData")
    os.makedirs(out, exist_ok=True)
    case = make_phantom(SEED, INDEX, style="raw", grid="thick")
    scale = 1000.0 / float(np.percentile(case.image[case.image > 0], 99.5))
    for name, arr in (("sample-flair.nii.gz", np.round(case.image * scale).astype(np.int16)),
                      ("sample-label.nii.gz", case.label.astype(np.uint8))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing([float(np.linalg.norm(case.affine[:3, a])) for a in range(3)])
        img.SetOrigin([float(v) for v in case.affine[:3, 3]])
        sitk.WriteImage(img, os.path.join(out, name), True)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(
            "# Sample data\n\n"
            "`sample-flair.nii.gz` (FLAIR-like phantom of a raw head as a scanner writes it: skull, scalp, neck, a noisy\n"
            "background and 5 mm axial slices; int16) and `sample-label.nii.gz` (whole-tumour truth) are\n"
            "case %d of phantom seed %d from `LowResSegLib.training.phantom.make_phantom(%d, %d, style=\"raw\", grid=\"thick\")`,\n"
            "written by `python scripts/make_sample.py`. Shape (k, j, i) = %s, spacing (i, j, k) = %s mm, LPS.\n"
            "The phantom seed is disjoint from the training seed (1) and the held-out seed (1001).\n\n"
            "Derived from the MNI152 2009a template (via nilearn). %s\n"
            % (INDEX, SEED, SEED, INDEX, case.image.shape,
               tuple(float(np.linalg.norm(case.affine[:3, a])) for a in range(3)), MNI_NOTICE))
    print("wrote", out, case.image.shape, case.params)


if __name__ == "__main__":
    main()
