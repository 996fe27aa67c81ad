"""Segment every case under a folder tree: image files, and DICOM studies by the series rule.

A case is an image file (NIfTI, NRRD, MetaImage) or a DICOM study (StudyInstanceUID), whose
series may sit in one folder or in one folder each, as PACS exports do. A study is read
from the series that :func:`LowResSegLib.images.dicomread.choose_series` picks for the model's
contrast; a study where it cannot pick fails with the list of its series, and the batch
goes on. Each case is one :class:`LowResSegLib.workflow.run.SegmentationRun` (all or nothing).
``batch.csv`` in the output folder gets one row per case and is rewritten (verified, atomically)
twice per case: as ``running`` before the case's outputs are written, and with its result after.
A batch killed at any point therefore leaves a complete ``batch.csv``, and a plain rerun skips the
cases done, and redoes (replacing their outputs, which are its own) the cases left ``running``.
A lock file in the output folder (``.lowresseg-batch.lock``, held with ``flock`` and released by the
kernel when the process dies) keeps a second batch out of the same folder.
A folder of label maps beside a folder of images (``labels/`` next to ``images/``, as ``lowresseg
phantom``, MSD and nnU-Net lay them out) holds no cases, nor does the output folder itself.
"""

import csv
import io
import os
import re
import socket
import time

from LowResSegLib.images.io import detect_format, remove_stale_temps, write_text

__all__ = ["Case", "find_cases", "run_batch", "read_report", "write_report", "CSV_NAME", "CSV_FIELDS",
           "FolderLock", "FolderInUse", "LOCK_NAME"]

CSV_NAME = "batch.csv"
LOCK_NAME = ".lowresseg-batch.lock"
_LABEL_DIRS = {"labels": "images", "labelstr": "imagestr", "labelsts": "imagests"}
CSV_FIELDS = ["case", "status", "message", "volume_ml", "review_score", "review", "series", "series_description",
              "seconds", "warnings", "input", "outputs"]  # review_score, review: an ensemble's (see inference/ensemble)
UNCERTAINTY_SUFFIX = ".disagreement.nii.gz"


class Case(object):
    """One thing to segment: ``path`` (a file or a folder), plus ``series`` for a DICOM study."""

    def __init__(self, case_id, path, series=None, dicom=False, error=None, note=None):
        self.case_id, self.path, self.series, self.dicom, self.error = case_id, path, series, dicom, error
        self.note = note  # how the series was chosen, when the study held several


def _case_id(root, path):
    rel = os.path.relpath(path, root)
    rel = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", rel, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace(os.sep, "__")).strip("_") or "case"


def find_cases(root, contrast=None, exclude=None, accept_unknown_contrast=False):
    """Every case under ``root``, in a stable order (see the module docstring); ``exclude``: a folder to leave out.

    A DICOM study whose chosen series is not ``contrast`` by its headers, and an image file whose name says
    another contrast (``*_t1.nii.gz``), become failed cases with the reason (dicomread.contrast_refusal);
    a series that names no contrast is refused unless ``accept_unknown_contrast``.
    """
    from LowResSegLib.workflow.run import contrast_from_name
    from LowResSegLib.images import dicomread as dr

    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ValueError("%s is not a folder; `lowresseg batch` walks a folder tree (use `segment` for one case)"
                         % root)
    exclude = os.path.abspath(exclude) if exclude else None
    files, studies = [], {}
    for folder, dirs, names in os.walk(root):
        lower = set(d.lower() for d in dirs)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (_LABEL_DIRS.get(d.lower()) in lower)  # label maps beside their images
                         and os.path.join(folder, d) != exclude)
        names = sorted(n for n in names if not n.startswith("."))
        images = [n for n in names if detect_format(os.path.join(folder, n)) in ("nifti", "nrrd", "mha")]
        files.extend(os.path.join(folder, n) for n in images)
        if len(images) < len(names):
            try:
                series, _ = dr.scan_folder(folder)
            except dr.DicomReadError as exc:
                studies.setdefault(("unreadable", folder), []).append((folder, None, str(exc)))
                continue
            for uid, s in series.items():
                studies.setdefault(("study", s.study_uid or folder), []).append((folder, s, None))
    cases = []
    for p in files:
        named = contrast_from_name(p)
        error = None
        if contrast and named and named != contrast.upper():
            error = ("%s looks like %s by its file name, not %s: a %s model's segmentation of it would be "
                     "meaningless; segment it with `lowresseg segment` if it is a %s" % (
                         os.path.basename(p), named, contrast.upper(), contrast.upper(), contrast.upper()))
        cases.append(Case(_case_id(root, p), p, error=error))
    for key, members in sorted(studies.items(), key=lambda kv: kv[1][0][0]):
        first_folder = members[0][0]
        if key[0] == "unreadable":
            cases.append(Case(_case_id(root, first_folder), first_folder, dicom=True, error=members[0][2]))
            continue
        by_uid = {s.uid: (folder, s) for folder, s, _ in members}
        folders = sorted(set(folder for folder, _, _ in members))
        common = os.path.commonpath(folders) if len(folders) > 1 else folders[0]
        case_id = _case_id(root, common) if common != root else _case_id(root, folders[0])
        try:
            chosen = dr.choose_series({uid: s for uid, (_, s) in by_uid.items()}, contrast,
                                      where="study %s" % key[1])
        except dr.DicomReadError as exc:
            cases.append(Case(case_id, common, dicom=True, error=str(exc)))
            continue
        folder = by_uid[chosen.uid][0]
        refusal = dr.contrast_refusal(chosen, contrast, accept_unknown_contrast)
        if refusal:
            cases.append(Case(case_id, folder, series=chosen.uid, dicom=True, error="the study's %sseries %s" % (
                "only " if len(by_uid) == 1 else "", refusal.replace("pass --series UID", "segment it with "
                                                                     "`lowresseg segment --series UID`"))))
            continue
        note = None
        if len(by_uid) > 1:
            note = "the study holds %d image series; read %s (the one that looks like %s)" % (
                len(by_uid), chosen.label, contrast)
        cases.append(Case(case_id, folder, series=chosen.uid, dicom=True, note=note))
    ids = {}
    for c in cases:  # two cases may reduce to one id: number them
        n = ids.get(c.case_id, 0)
        ids[c.case_id] = n + 1
        if n:
            c.case_id = "%s_%d" % (c.case_id, n + 1)
    return cases


def read_report(path, key="case"):
    """The rows of an earlier report by their ``key`` column ({} when there is none): what a rerun keeps."""
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {row[key]: row for row in csv.DictReader(f) if row.get(key)}


def write_report(path, rows, fields=CSV_FIELDS):
    """Rewrite the report whole: a uniquely named temporary file, read back, then renamed over it.

    An interrupted run (or a full disk) leaves the complete earlier report; raises
    :class:`LowResSegLib.images.io.WriteError` naming ``path`` when it cannot be written.
    """
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    for row in rows.values():
        w.writerow({k: row.get(k, "") for k in fields})
    write_text(path, text.getvalue(), overwrite=True)


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock; the message names it."""


class FolderLock(object):
    """An exclusive lock on ``folder`` for one batch: ``LOCK_NAME`` there, holding the owner's PID and host.

    Held with ``fcntl.flock``, which the kernel releases when the process ends however it ends, so a
    lock left by a killed batch is stale by construction and is simply taken over. (Without ``fcntl``,
    on Windows, there is no lock.)
    """

    def __init__(self, folder):
        self.path = os.path.join(os.path.abspath(folder), LOCK_NAME)
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 512).decode("utf-8", "replace").split()
                os.close(fd)
                owner = dict(zip(owner[::2], owner[1::2]))
                raise FolderInUse("the output folder %s is in use by another batch (PID %s on %s, since %s); wait "
                                  "for it to end or choose another --out"
                                  % (os.path.dirname(self.path), owner.get("pid", "?"), owner.get("host", "?"),
                                     owner.get("since", "?")))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if not same:  # the holder before us removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, ("pid %d host %s since %s\n" % (os.getpid(), socket.gethostname(),
                                                              time.strftime("%Y-%m-%dT%H:%M:%S"))).encode())
            except OSError:
                pass  # a full disk: the lock holds all the same, only its message lacks the owner
            self.fd = fd
            return self
        raise FolderInUse("cannot lock the output folder %s; try again" % os.path.dirname(self.path))

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.remove(self.path)  # still locked: a process that opened it meanwhile sees it is gone and retries
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False


def run_batch(root, model, out, dicom_seg=False, overwrite=False, repository=None, threads=0, progress=True,
              engine=None, accept_unknown_contrast=False, uncertainty=False):
    """Segment every case under ``root`` into ``out``; returns one row per case.

    With an ensemble model, each row holds the review score and flag; ``uncertainty`` also writes the
    disagreement map as ``<case>.disagreement.nii.gz``.

    Outputs per case: ``<case>.nii.gz`` and, with ``dicom_seg``, ``<case>.seg.dcm`` for
    DICOM cases. A case already marked done whose outputs exist is skipped unless
    ``overwrite`` (its returned row has status ``skipped``; ``batch.csv`` keeps ``done``). A case
    left ``running`` by an interrupted batch is redone, replacing its own outputs. A failing case
    is recorded and the batch goes on; a ``batch.csv`` that cannot be written (a full disk) is said
    in the row's ``report_error`` and the batch goes on. Raises :class:`FolderInUse` when another
    batch works in ``out``.
    """
    from LowResSegLib.inference.ensemble import open_engine
    from LowResSegLib.repository.modelstore import is_ensemble
    from LowResSegLib.workflow.run import SegmentationRun, card_contrast

    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError("--out %s is a file, not a folder" % out)
    engine = engine or open_engine(model, repository, threads=threads)  # an ensemble, or one model
    if uncertainty and not is_ensemble(engine.card):
        raise ValueError("--uncertainty needs an ensemble model (one whose card names member models, e.g. "
                         "elunet-ensemble-16-32-interp32); %s is a single model" % engine.card["name"])
    cases = find_cases(root, card_contrast(engine.card), exclude=out, accept_unknown_contrast=accept_unknown_contrast)
    if not cases:
        raise ValueError("no images found under %s (NIfTI, NRRD, MetaImage files or DICOM series)" % root)
    os.makedirs(out, exist_ok=True)
    with FolderLock(out):
        remove_stale_temps(out)
        return _run_cases(cases, out, dicom_seg, overwrite, engine, progress, SegmentationRun, uncertainty)


def _run_cases(cases, out, dicom_seg, overwrite, engine, progress, SegmentationRun, uncertainty=False):
    from tqdm import tqdm

    csv_path = os.path.join(out, CSV_NAME)
    rows = read_report(csv_path)
    result = {}

    def save(case_id):
        try:
            write_report(csv_path, rows)
        except OSError as exc:
            result.setdefault(case_id, dict(rows[case_id]))["report_error"] = str(exc)
            return False
        return True

    bar = tqdm(cases, desc="batch", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id[-40:])
        labels_out = os.path.join(out, case.case_id + ".nii.gz")
        seg_out = os.path.join(out, case.case_id + ".seg.dcm") if dicom_seg and case.dicom else None
        unc_out = os.path.join(out, case.case_id + UNCERTAINTY_SUFFIX) if uncertainty else None
        wanted = [p for p in (labels_out, seg_out, unc_out) if p]
        old = rows.get(case.case_id)
        if old and old.get("status") == "done" and all(os.path.exists(p) for p in wanted) and not overwrite:
            result[case.case_id] = dict(old, status="skipped", message="done in an earlier run")
            continue
        row = {"case": case.case_id, "input": case.path, "series": case.series or ""}
        if case.error:
            row.update(status="failed", message=case.error)
        else:
            # recorded before any output is written: a rerun after a kill knows these outputs are its own
            rows[case.case_id] = dict(row, status="running", outputs=" ".join(wanted),
                                      message="started; a batch that ends here is redone by a rerun")
            if not save(case.case_id):
                row.update(status="failed", message="not started: %s" % result[case.case_id]["report_error"])
                rows[case.case_id] = row
                result[case.case_id] = dict(row, report_error=result[case.case_id]["report_error"])
                continue
            mine = overwrite or (old is not None and old.get("status") == "running")
            run = SegmentationRun(case.path, labels_out=labels_out, dicom_seg_out=seg_out, overwrite=mine,
                                  series=case.series, engine=engine, uncertainty_out=unc_out)
            try:
                run.run()
                if case.note:
                    run.warnings.insert(0, case.note)
                row.update(run.summary(), case=case.case_id, status="done", message="")
            except (ValueError, OSError, RuntimeError, MemoryError) as exc:
                row.update(status="failed", message=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                           warnings=" | ".join(run.warnings))
        rows[case.case_id] = row
        result[case.case_id] = dict(row)
        save(case.case_id)
    for case_id, row in rows.items():  # rows of earlier runs for cases not found now
        result.setdefault(case_id, row)
    return list(result.values())
