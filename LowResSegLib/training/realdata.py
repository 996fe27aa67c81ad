"""Real labelled cases, by reference: a manifest of (repository, commit, path, sha256), never the images.

The images fall under BraTS / TCIA terms, so the project commits only ``real_manifest.json``.
``lowresseg fetch-real`` downloads every file from its repository at the recorded commit,
checks its sha256 and stores it under :func:`real_data_dir`; training (``--data real:train``)
and ``bench/quality.py`` (``--data real:val``) then read them from there, offline.
"""

import hashlib
import json
import os

MANIFEST_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_manifest.json")
SPLITS = ("train", "val", "all")
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"


def real_data_dir():
    """Where fetched cases live: ``$LOWRESSEG_REAL_DATA``, else ``~/.cache/lowresseg/real``."""
    return os.environ.get("LOWRESSEG_REAL_DATA",
                          os.path.join(os.path.expanduser("~"), ".cache", "lowresseg", "real"))


def load_manifest(path=None):
    with open(path or MANIFEST_PATH) as f:
        return json.load(f)


def manifest_cases(split="all", path=None):
    """The manifest's case entries of one split ("train", "val" or "all")."""
    if split not in SPLITS:
        raise ValueError("unknown real-data split %r: use one of %s" % (split, ", ".join(SPLITS)))
    return [c for c in load_manifest(path)["cases"] if split == "all" or c["split"] == split]


def case_files(case, root=None):
    """(image path, label path) of a fetched case."""
    d = os.path.join(root or real_data_dir(), case["case"])
    return os.path.join(d, "image.nii.gz"), os.path.join(d, "label.nii.gz")


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _file_ok(path, sha):
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return _sha256(f.read()) == sha


def download(repository, commit, path, timeout=120):
    """The bytes of one file of a public GitHub repository at ``commit``."""
    from urllib.request import urlopen

    with urlopen(RAW_URL.format(repository=repository, commit=commit, path=path), timeout=timeout) as r:
        return r.read()


def fetch(split="all", root=None, read=download, progress=True):
    """Download (or verify) every file of ``split``; returns the number of files written.

    ``read(repository, commit, path) -> bytes`` is the source (HTTP by default). A file whose
    sha256 differs from the manifest is refused and nothing is written for it.
    """
    from tqdm import tqdm

    root = root or real_data_dir()
    written = 0
    for case in tqdm(manifest_cases(split), desc="real cases", unit="case", disable=not progress):
        for (path, sha), dest in zip(((case["image_path"], case["sha256_image"]),
                                      (case["label_path"], case["sha256_label"])), case_files(case, root)):
            if _file_ok(dest, sha):
                continue
            data = read(case["repository"], case["commit"], path)
            if _sha256(data) != sha:
                raise ValueError("%s:%s@%s has sha256 %s, the manifest says %s: the file changed or the "
                                 "download was corrupted; nothing was written for it"
                                 % (case["repository"], path, case["commit"][:12], _sha256(data), sha))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = dest + ".part"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
            written += 1
    return written


def iter_real_cases(split="all", root=None, limit=None):
    """Yield ``sources.Case`` for the fetched cases of ``split`` (whole tumour = label > 0)."""
    from pathlib import Path

    from LowResSegLib.training.sources import _load_pair, make_label_mapper

    cases = manifest_cases(split)[:limit]
    missing = [c["case"] for c in cases if not all(os.path.isfile(p) for p in case_files(c, root))]
    if missing:
        raise FileNotFoundError("%d real case(s) of split %r are not in %s (%s): run `lowresseg fetch-real` "
                                "first (it downloads them from GitHub and checks their sha256)"
                                % (len(missing), split, root or real_data_dir(), ", ".join(missing[:3])))
    mapper = make_label_mapper("wt")
    for c in cases:
        image, label = case_files(c, root)
        yield _load_pair(c["case"], Path(image), Path(label), None, mapper)
