"""Segment every case under a folder tree: image files, and DICOM studies by the series rule.

A case is an image file (NIfTI, NRRD, MetaImage) or a DICOM study (StudyInstanceUID), whose
series may sit in one folder or in one folder each, as PACS exports do. A study is read
from the series that :func:`LowResSegLib.images.dicomread.choose_series` picks for the model's
contrast; a study where it cannot pick fails with the list of its series, and the batch
goes on. Each case is one :class:`LowResSegLib.workflow.run.SegmentationRun` (all or nothing).
``batch.csv`` in the output folder gets one row per case and is rewritten after every case,
so an interrupted batch keeps what it did, and a rerun skips the cases already done.
"""

import csv
import os
import re

from LowResSegLib.images.io import detect_format

__all__ = ["Case", "find_cases", "run_batch", "read_report", "write_report", "CSV_NAME", "CSV_FIELDS"]

CSV_NAME = "batch.csv"
CSV_FIELDS = ["case", "status", "message", "volume_ml", "series", "series_description", "seconds", "warnings",
              "input", "outputs"]


class Case(object):
    """One thing to segment: ``path`` (a file or a folder), plus ``series`` for a DICOM study."""

    def __init__(self, case_id, path, series=None, dicom=False, error=None, note=None):
        self.case_id, self.path, self.series, self.dicom, self.error = case_id, path, series, dicom, error
        self.note = note  # how the series was chosen, when the study held several


def _case_id(root, path):
    rel = os.path.relpath(path, root)
    rel = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", rel, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace(os.sep, "__")).strip("_") or "case"


def find_cases(root, contrast=None):
    """Every case under ``root``, in a stable order (see the module docstring)."""
    from LowResSegLib.images import dicomread as dr

    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ValueError("%s is not a folder; `lowresseg batch` walks a folder tree (use `segment` for one case)"
                         % root)
    files, studies = [], {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
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
    cases = [Case(_case_id(root, p), p) for p in files]
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
    """Rewrite the report whole (via a .part file), so an interrupted run leaves a complete one."""
    tmp = path + ".part"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows.values():
            w.writerow({k: row.get(k, "") for k in fields})
    os.replace(tmp, path)


def run_batch(root, model, out, dicom_seg=False, overwrite=False, repository=None, threads=0, progress=True,
              engine=None):
    """Segment every case under ``root`` into ``out``; returns the rows of ``batch.csv``.

    Outputs per case: ``<case>.nii.gz`` and, with ``dicom_seg``, ``<case>.seg.dcm`` for
    DICOM cases. A case already marked done whose outputs exist is skipped unless
    ``overwrite``. A failing case is recorded and the batch goes on.
    """
    from tqdm import tqdm

    from LowResSegLib.inference.engines import LocalEngine
    from LowResSegLib.workflow.run import SegmentationRun, card_contrast

    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError("--out %s is a file, not a folder" % out)
    engine = engine or LocalEngine(model, repository, threads=threads)
    cases = find_cases(root, card_contrast(engine.card))
    if not cases:
        raise ValueError("no images found under %s (NIfTI, NRRD, MetaImage files or DICOM series)" % root)
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, CSV_NAME)
    rows = read_report(csv_path)
    bar = tqdm(cases, desc="batch", unit="case", disable=not progress)
    for case in bar:
        bar.set_postfix_str(case.case_id[-40:])
        labels_out = os.path.join(out, case.case_id + ".nii.gz")
        seg_out = os.path.join(out, case.case_id + ".seg.dcm") if dicom_seg and case.dicom else None
        wanted = [p for p in (labels_out, seg_out) if p]
        old = rows.get(case.case_id)
        if old and old.get("status") == "done" and all(os.path.exists(p) for p in wanted) and not overwrite:
            continue
        row = {"case": case.case_id, "input": case.path, "series": case.series or ""}
        if case.error:
            row.update(status="failed", message=case.error)
        else:
            run = SegmentationRun(case.path, labels_out=labels_out, dicom_seg_out=seg_out, overwrite=overwrite,
                                  series=case.series, engine=engine)
            try:
                run.run()
                if case.note:
                    run.warnings.insert(0, case.note)
                row.update(run.summary(), case=case.case_id, status="done", message="")
            except (ValueError, OSError, RuntimeError, MemoryError) as exc:
                row.update(status="failed", message=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                           warnings=" | ".join(run.warnings))
        rows[case.case_id] = row
        write_report(csv_path, rows)
    return list(rows.values())
