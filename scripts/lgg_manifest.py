#!/usr/bin/env python3
"""Write the ``"lgg"`` entry of LowResSegLib/training/real_manifest.json from a clone of the LGG set's repository.

    python scripts/lgg_manifest.py /path/to/clone-of-hua2980-brain-tumor-segmentation

Lists the patient folders of kaggle_3m/ at the recorded commit, leaves out the reserved
institution by its prefix before anything in those folders is listed or read, checks each
patient's files against the kaggle_3m layout, and records per patient its slice count, tumour
slices, one sha256 over its files and its split. The split is fixed by SEED: per institution
with more than one patient, VAL_SHARE of the patients (rounded) go to "val", the rest to "train".
"""

import argparse
import io
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from LowResSegLib.training import kaggle3m  # noqa: E402
from LowResSegLib.training.lggdata import GitSource  # noqa: E402
from LowResSegLib.training.realdata import MANIFEST_PATH  # noqa: E402

REPOSITORY = "hua2980/brain-tumor-segmentation"
COMMIT = "383f3c2187d85f390e7b747ab02ab83dc15616b1"
FOLDER = "kaggle_3m"
SEED = 21
VAL_SHARE = 0.27


def ls_tree(repo, path):
    out = subprocess.run(["git", "-C", repo, "ls-tree", COMMIT, path + "/"], check=True,
                         stdout=subprocess.PIPE).stdout.decode()
    rows = [line.split("\t", 1) for line in out.splitlines()]
    return [(meta.split()[1], os.path.basename(name)) for meta, name in rows]


def patient_entry(repo, source, patient):
    names = sorted(n for kind, n in ls_tree(repo, "%s/%s" % (FOLDER, patient)) if kind == "blob")
    n_slices = len(names) // 2
    if names != kaggle3m.slice_file_names(patient, n_slices):
        raise SystemExit("%s: its files are not slices 1..%d with masks" % (patient, n_slices))
    files = [(n, source(REPOSITORY, COMMIT, "%s/%s/%s" % (FOLDER, patient, n))) for n in names]
    from PIL import Image

    tumour = sum(bool(np.asarray(Image.open(io.BytesIO(data))).any()) for n, data in files if n.endswith("_mask.tif"))
    return {"patient": patient, "institution": kaggle3m.institution(patient), "slices": n_slices,
            "tumour_slices": int(tumour), "sha256": kaggle3m.files_digest(files)}


def assign_splits(patients):
    rng = np.random.default_rng(SEED)
    for inst in sorted({p["institution"] for p in patients}):
        group = [p for p in patients if p["institution"] == inst]
        n_val = int(round(VAL_SHARE * len(group))) if len(group) > 1 else 0
        val = set(rng.permutation(len(group))[:n_val].tolist())
        for i, p in enumerate(group):
            p["split"] = "val" if i in val else "train"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="a clone (bare or not) of %s holding commit %s" % (REPOSITORY, COMMIT))
    ap.add_argument("--manifest", default=MANIFEST_PATH)
    args = ap.parse_args()

    folders = sorted(n for kind, n in ls_tree(args.repo, FOLDER)
                     if kind == "tree" and not kaggle3m.is_reserved(n))  # reserved: dropped by name, never opened
    source = GitSource(args.repo, COMMIT)
    try:
        patients = [patient_entry(args.repo, source, p) for p in folders]
    finally:
        source.close()
    assign_splits(patients)
    with open(args.manifest) as f:
        manifest = json.load(f)
    manifest["lgg"] = {
        "description": "The LGG segmentation set of Buda, Saha & Mazurowski (Computers in Biology and Medicine "
                       "2019, 'lgg-mri-segmentation' / kaggle_3m): TCGA lower-grade glioma patients, RGB TIFF "
                       "slices (pre-contrast, FLAIR, post-contrast) with manual FLAIR-abnormality masks. "
                       "`lowresseg fetch-real --source lgg` restores the patients below from the commit and "
                       "checks each one's sha256 (kaggle3m.files_digest over its files). split 'val' is the "
                       "lgg:val set: never trained on.",
        "repository": REPOSITORY,
        "commit": COMMIT,
        "folder": FOLDER,
        "mirror": "TruongVanHien194276/Brain_Segmentation_data @ 40bfc1f393feb039a3d3742ba9f536dc6d50d2b0 is "
                  "reported to hold the same files (not checked here); its commit differs, so restore from it "
                  "with --from its kaggle_3m folder",
        "reserved_prefix": kaggle3m.RESERVED_PREFIX,
        "reserved": "Every patient of institution CS (folders %s*) is reserved for independent evaluation: never "
                    "listed, fetched, read, cached, trained, validated, tuned or reported here."
                    % kaggle3m.RESERVED_PREFIX,
        "terms": "Buda et al. 2019 (doi:10.1016/j.compbiomed.2019.05.002) and the TCGA-LGG collection of TCIA "
                 "(CC BY 3.0): cite both; the repository states no separate data licence.",
        "geometry": {"spacing_mm": list(kaggle3m.NOMINAL_SPACING_MM), "nominal": True,
                     "why": "the TIFFs carry no geometry; see LowResSegLib/training/kaggle3m.py"},
        "label_rule": "mask > 0 (masks are 0/255)",
        "image_rule": "channel %d (FLAIR) of the RGB image" % kaggle3m.FLAIR_CHANNEL,
        "split_rule": "seed %d: per institution with more than one patient, %.0f %% (rounded) to val"
                      % (SEED, 100 * VAL_SHARE),
        "patients": patients,
    }
    with open(args.manifest, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    n_val = sum(p["split"] == "val" for p in patients)
    print("%d patients (%d val, %d train) written to %s" % (len(patients), n_val, len(patients) - n_val, args.manifest))


if __name__ == "__main__":
    main()
