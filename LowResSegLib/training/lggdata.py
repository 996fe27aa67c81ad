"""The public LGG FLAIR set (kaggle_3m) by reference: restore it from its recorded commit, verify it, split it.

``real_manifest.json`` holds, under ``"lgg"``, the repository and commit the set is committed in,
and per patient its slice count (which names its files: :func:`kaggle3m.slice_file_names`),
one sha256 over its files (:func:`kaggle3m.files_digest`) and its split. The images are never
committed. Patients of institution CS (``TCGA_CS_*``) are reserved for independent evaluation:
the manifest records the prefix alone, and nothing here lists, restores or reads them.

``lowresseg fetch-real --source lgg`` restores the patients into :func:`lgg_data_dir` from GitHub,
or offline ``--from`` a clone of the repository or a downloaded kaggle_3m folder; training then
reads ``--data lgg:train`` and the quality bench ``lgg:val``.
"""

import os
import shutil
import subprocess

from LowResSegLib.training import kaggle3m
from LowResSegLib.training.realdata import SPLITS, download, load_manifest, real_data_dir


def lgg_data_dir():
    """The restored kaggle_3m folder: ``$LOWRESSEG_LGG_DATA``, else ``<real data dir>/kaggle_3m``."""
    return os.environ.get("LOWRESSEG_LGG_DATA", os.path.join(real_data_dir(), "kaggle_3m"))


def lgg_manifest(path=None):
    """The manifest's ``"lgg"`` entry: repository, commit, folder, reserved prefix, patients."""
    return load_manifest(path)["lgg"]


def lgg_patients(split="all", path=None):
    """The manifest's patient entries of one split ("train", "val" or "all")."""
    if split not in SPLITS:
        raise ValueError("unknown LGG split %r: use one of %s" % (split, ", ".join(SPLITS)))
    return [p for p in lgg_manifest(path)["patients"] if split == "all" or p["split"] == split]


def patient_file_names(entry):
    return kaggle3m.slice_file_names(entry["patient"], entry["slices"])


# --------------------------------------------------------------------------- sources


class GitSource(object):
    """``read(repository, commit, path) -> bytes`` from a local clone (bare or not), via ``git cat-file --batch``."""

    def __init__(self, repo_dir, commit):
        self.repo_dir = os.path.abspath(repo_dir)
        ok = subprocess.run(["git", "-C", self.repo_dir, "cat-file", "-e", commit + "^{commit}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            raise FileNotFoundError("%s does not hold commit %s: clone the repository named in the manifest "
                                    "(git clone, then git fetch origin %s) or pass a kaggle_3m folder"
                                    % (self.repo_dir, commit, commit))
        self.proc = subprocess.Popen(["git", "-C", self.repo_dir, "cat-file", "--batch"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, repository, commit, path):
        self.proc.stdin.write(("%s:%s\n" % (commit, path)).encode())
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().decode().split()
        if len(header) != 3 or header[1] != "blob":
            raise FileNotFoundError("%s is not a file of commit %s in %s" % (path, commit[:12], self.repo_dir))
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)  # the newline after each object
        return data

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class FolderSource(object):
    """``read(repository, commit, path) -> bytes`` from a kaggle_3m folder on disk (e.g. the Kaggle download)."""

    def __init__(self, kaggle_dir, folder):
        self.root, self.folder = os.path.abspath(kaggle_dir), folder

    def __call__(self, repository, commit, path):
        rel = path[len(self.folder) + 1:] if path.startswith(self.folder + "/") else path
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def close(self):
        pass


def open_source(path, entry):
    """A local source for :func:`fetch_lgg`: a git clone holding the recorded commit, or a kaggle_3m folder."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError("--from %s: no such folder; pass a clone of %s or a kaggle_3m folder"
                                % (path, entry["repository"]))
    if os.path.exists(os.path.join(path, ".git")) or os.path.isfile(os.path.join(path, "HEAD")):
        return GitSource(path, entry["commit"])
    if os.path.isdir(os.path.join(path, entry["folder"])):
        path = os.path.join(path, entry["folder"])
    return FolderSource(path, entry["folder"])


class _HttpSource(object):
    def __call__(self, repository, commit, path):
        return download(repository, commit, path)

    def close(self):
        pass


# --------------------------------------------------------------------------- restore


def _patient_ok(folder, names, digest):
    if not os.path.isdir(folder):
        return False
    if sorted(n for n in os.listdir(folder) if not n.startswith(".")) != names:
        return False
    return kaggle3m.folder_digest(folder, names) == digest


def fetch_lgg(split="all", dest=None, source=None, progress=True, manifest=None):
    """Restore (or verify) every patient of ``split`` into ``dest``; returns the number of patients written.

    ``source``: ``read(repository, commit, path) -> bytes`` (HTTP from GitHub by default; see
    :func:`open_source`). A patient whose files do not give the recorded digest is refused and
    nothing is written for it; a patient is written whole or not at all.
    """
    from tqdm import tqdm

    entry = lgg_manifest(manifest)
    dest = os.path.abspath(dest or lgg_data_dir())
    source = source or _HttpSource()
    written = 0
    for p in tqdm(lgg_patients(split, manifest), desc="LGG patients", unit="patient", disable=not progress):
        name = p["patient"]
        if kaggle3m.is_reserved(name):
            raise ValueError("the manifest lists a reserved %s* patient; it must not: restore the manifest "
                             "from git" % kaggle3m.RESERVED_PREFIX)
        names = patient_file_names(p)
        folder = os.path.join(dest, name)
        if _patient_ok(folder, names, p["sha256"]):
            continue
        files = []
        for n in names:
            path = "%s/%s/%s" % (entry["folder"], name, n)
            try:
                files.append((n, source(entry["repository"], entry["commit"], path)))
            except (OSError, KeyError) as exc:
                raise FileNotFoundError("%s: %s is missing from the source (%s); nothing was written for %s"
                                        % (name, path, exc, name)) from exc
        digest = kaggle3m.files_digest(files)
        if digest != p["sha256"]:
            raise ValueError("%s: its %d files from the source give sha256 %s, the manifest says %s: a file "
                             "changed or was corrupted; nothing was written for it"
                             % (name, len(names), digest, p["sha256"]))
        part = folder + ".part"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        for n, data in files:
            with open(os.path.join(part, n), "wb") as f:
                f.write(data)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(part, folder)
        written += 1
    return written


def iter_lgg_cases(split="all", root=None, limit=None):
    """Cases (:func:`kaggle3m.read_patient`) of the restored patients of ``split``; layout checked up front."""
    root = root or lgg_data_dir()
    patients = lgg_patients(split)[:limit]
    missing = [p["patient"] for p in patients if not os.path.isdir(os.path.join(root, p["patient"]))]
    if missing:
        raise FileNotFoundError("%d LGG patient(s) of split %r are not in %s (%s): run `lowresseg fetch-real "
                                "--source lgg` first (add --from PATH offline; see docs/data.md)"
                                % (len(missing), split, root, ", ".join(missing[:3])))
    folders = [os.path.join(root, p["patient"]) for p in patients]
    for folder in folders:
        kaggle3m.slice_files(folder)
    return (kaggle3m.read_patient(folder) for folder in folders)
