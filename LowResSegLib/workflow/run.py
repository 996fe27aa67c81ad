"""One segmentation run: planned, checked, executed, then committed as a whole.

A run that fails after a minute of inference must not leave half its outputs behind,
and must never touch a file the user already has. So :class:`SegmentationRun`

1. **plans and checks** everything that can be checked before inference: the model, the
   output paths (writable, distinct, not there unless ``overwrite``), the input volume (read
   by the rules of :mod:`LowResSegLib.images.io`), and whether a DICOM-SEG can be built on its
   source headers;
2. **executes** the pipeline (progress and cancel between chunks; a cancelled run ends here);
3. **commits**: every output is written to a hidden temporary file beside its target, flushed and
   read back (a full disk is an error naming the target, never a truncated mask), and only when all
   of them exist are they renamed into place. A failure on the way removes the
   temporaries and puts back anything already replaced.

The CLI (``segment``, ``batch``) and the Slicer module use this class; nothing else writes
segmentation outputs. Python 3.9+.
"""

import os
import re
import time

from LowResSegLib.repository.modelstore import is_ensemble
from LowResSegLib.results.outputs import LABEL_SUFFIXES, check_output_path

__all__ = ["RunError", "SegmentationRun", "card_contrast", "contrast_from_name", "contrast_warning", "result_warnings",
           "commit_files", "IMPLAUSIBLE_ML", "AUTO"]

AUTO = "auto"  # the model name that asks for LowResSegLib.inference.modelchoice to pick one for a time budget
IMPLAUSIBLE_ML = 400.0  # larger "tumours" than this (the largest of our real cases: ~350 mL) are flagged
_CONTRAST_WORDS = (("FLAIR", re.compile(r"flair", re.I)), ("T1", re.compile(r"(^|[^a-z0-9])t1(ce|c|gd|w)?([^a-z0-9]|$)", re.I)),
                   ("T2", re.compile(r"(^|[^a-z0-9])t2w?([^a-z0-9]|$)", re.I)),
                   ("DWI", re.compile(r"(^|[^a-z])(dwi|adc|dti)([^a-z]|$)", re.I)))


class RunError(ValueError):
    """The run cannot go ahead; the message says why and what to do."""


def card_contrast(card):
    """The MR contrast a model expects ("FLAIR"), from its card's ``sequence``."""
    words = str(card.get("sequence") or "").split()
    return words[0].strip(",;").upper() if words else None


def contrast_from_name(path):
    """What a file name says about its contrast (BraTS-style ``*_flair.nii.gz``, ``*_t1ce.nii.gz``), or None."""
    name = os.path.basename(os.path.normpath(path))
    found = [c for c, rx in _CONTRAST_WORDS if rx.search(name)]
    return found[0] if len(found) == 1 else None


def contrast_warning(card, seen, where):
    """The line a user reads when the input looks like another contrast than the model's, else None."""
    expected = card_contrast(card)
    if expected and seen and seen != expected:
        return ("the input looks like %s (by %s), but %s is a %s model: the result may be meaningless; check "
                "that this is the %s series" % (seen, where, card["name"], expected, expected))
    return None


def result_warnings(segmentation):
    """What a user should know about a finished mask: empty, or larger than any real tumour."""
    ml = segmentation.volume_ml()
    if ml > IMPLAUSIBLE_ML:
        return ["the mask holds %.0f mL, more than any real tumour we know of (%.0f mL): the input may not be a "
                "%s, or the model failed on it; review before use"
                % (ml, IMPLAUSIBLE_ML, card_contrast(segmentation.card) or "matching series")]
    if not segmentation.labels.any():
        return ["no tumour found (an empty mask)"]
    return []


def _stage_name(final):
    from LowResSegLib.images.io import temp_tag

    head, tail = os.path.split(final)
    # same suffix: writers dispatch on it; the PID inside lets a later run remove what a killed one left
    return os.path.join(head, ".lowresseg-%s-%s" % (temp_tag(), tail))


def _remove_quietly(paths):
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass


def commit_files(pairs, overwrite=False):
    """Rename every (staged, final) pair into place, all or none.

    An existing final is refused unless ``overwrite``; a replaced one is kept aside until
    every rename succeeded, and put back if one fails.
    """
    done = []
    try:
        for staged, final in pairs:
            if os.path.lexists(final) and not overwrite:
                raise FileExistsError("%s already exists; pass --overwrite to replace it" % final)
            backup = None
            if os.path.lexists(final):
                backup = _stage_name(final) + ".old"
                os.replace(final, backup)
            done.append((final, backup))
            os.replace(staged, final)
    except BaseException:
        for final, backup in reversed(done):
            try:
                if os.path.lexists(final):  # ours: the staged file was renamed there
                    os.remove(final)
                if backup is not None:
                    os.replace(backup, final)
            except OSError:
                pass
        _remove_quietly(staged for staged, _ in pairs)
        raise
    _remove_quietly(backup for _, backup in done if backup is not None)
    from LowResSegLib.images.io import fsync_folder

    for folder in set(os.path.dirname(os.path.abspath(final)) for _, final in pairs):
        fsync_folder(folder)  # the renames survive a power cut


class SegmentationRun(object):
    """Segment ``input_path`` with ``model`` and write ``labels_out`` and/or ``dicom_seg_out``.

    ``model`` may be an ensemble (:mod:`LowResSegLib.inference.ensemble`): then ``uncertainty_out`` (NIfTI,
    NRRD or MetaImage) receives the disagreement map as whole percent (uint8: the share of members calling
    a voxel tumour where they disagree, 0 where all agree), the summary holds the review score and flag,
    and a flagged case adds a warning.

    ``engine`` may be given (e.g. a remote engine); else the model is loaded from
    ``repository``. ``channel`` and ``series`` pick a volume / a DICOM series (see
    :func:`LowResSegLib.images.io.read_volume`). ``volume``: a volume already in memory (Slicer's
    worker), used instead of reading ``input_path``, which then only names it. ``model="auto"`` with
    ``budget`` (see :mod:`LowResSegLib.inference.modelchoice`) picks the model in :meth:`plan`; ``choice.reason``
    says which and why (``log(text)`` hears about calibrations). After :meth:`run`, ``segmentation`` holds the
    result, ``warnings`` what the user should know, ``written`` the output paths.
    """

    def __init__(self, input_path, model=None, labels_out=None, dicom_seg_out=None, overwrite=False, channel=None,
                 series=None, repository=None, threads=0, engine=None, volume=None, budget=None, log=None,
                 uncertainty_out=None):
        self.input_path = os.fspath(input_path)
        self.model, self.engine = model, engine
        self.labels_out = os.path.abspath(labels_out) if labels_out else None
        self.dicom_seg_out = os.path.abspath(dicom_seg_out) if dicom_seg_out else None
        self.uncertainty_out = os.path.abspath(uncertainty_out) if uncertainty_out else None
        self.overwrite, self.channel, self.series = overwrite, channel, series
        self.repository, self.threads = repository, threads
        self.volume = volume
        self.segmentation = self.seg_sources = None
        self.warnings, self.written, self.seconds = [], [], 0.0
        self.planned = False
        self.budget, self.log, self.choice = budget, log, None  # model AUTO: chosen in plan() (modelchoice)

    # ------------------------------------------------------------------ plan

    def plan(self):
        """Every check that needs no inference; raises before anything is written."""
        from LowResSegLib.images.io import read_volume

        outs = [p for p in (self.labels_out, self.dicom_seg_out, self.uncertainty_out) if p]
        if self.labels_out:
            check_output_path(self.labels_out, self.overwrite, LABEL_SUFFIXES + (".seg.nrrd",))
        if self.dicom_seg_out:
            check_output_path(self.dicom_seg_out, self.overwrite, (".dcm",))
        if self.uncertainty_out:
            if self.uncertainty_out.lower().endswith(".seg.nrrd"):
                raise RunError("--uncertainty %s: the disagreement map is an image; use .nii.gz, .nii, .nrrd or .mha"
                               % self.uncertainty_out)
            check_output_path(self.uncertainty_out, self.overwrite, LABEL_SUFFIXES)
        if len(set(os.path.normcase(p) for p in outs)) < len(outs):
            dup = next(p for p in outs if sum(os.path.normcase(q) == os.path.normcase(p) for q in outs) > 1)
            raise RunError("two outputs (--output, --dicom-seg, --uncertainty) name the same file %s; give them "
                           "different names" % dup)
        from LowResSegLib.images.io import remove_stale_temps

        for folder in set(os.path.dirname(p) for p in outs):
            remove_stale_temps(folder)  # what a killed run left behind (its process is gone)
        if self.engine is None and self.model == AUTO:
            self._choose_model(read_volume)
        if self.engine is None:
            from LowResSegLib.inference.ensemble import open_engine

            if not self.model:
                raise RunError("no model given; pick one of `lowresseg models`")
            self.engine = open_engine(self.model, self.repository, threads=self.threads)  # an ensemble, or one model
        card = self.engine.card
        if self.uncertainty_out and not is_ensemble(card):
            raise RunError("--uncertainty needs an ensemble model (one whose card names member models, e.g. "
                           "elunet-ensemble-16-32-interp32); %s is a single model" % card["name"])
        if self.volume is None:
            self.volume = read_volume(self.input_path, channel=self.channel, series=self.series,
                                      contrast=card_contrast(card))
        meta = self.volume.meta
        self.warnings = list(meta.get("warnings", []))
        if self.dicom_seg_out:
            if meta.get("format") != "dicom":
                raise RunError("--dicom-seg needs DICOM input (a folder with the source series); %s was read as %s"
                               % (self.input_path, meta.get("format")))
            from LowResSegLib.results.dicomseg import check_seg_sources

            self.seg_sources = check_seg_sources(meta["files"], meta.get("frames"))
            self.warnings.extend("DICOM-SEG: %s" % n for n in self.seg_sources.notes)
        dicom = meta.get("format") == "dicom"
        seen = meta.get("contrast") if dicom else contrast_from_name(self.input_path)
        warning = contrast_warning(card, seen, "its DICOM headers" if dicom else "its file name")
        if warning:
            self.warnings.append(warning)
        self.planned = True
        return self

    def _choose_model(self, read_volume):
        """``--model auto``: read the volume, then pick the model whose time for it fits the budget."""
        from LowResSegLib.inference.ensemble import open_engine
        from LowResSegLib.inference.modelchoice import axial_slices, choose_model
        from LowResSegLib.repository.modelstore import ModelRepository

        if self.budget is None:
            raise RunError("--model auto needs a time budget: --budget 1.5s (seconds per volume), or "
                           "fastest, balanced or best")
        repo = ModelRepository(self.repository)
        names = repo.usable_names()
        if not names:
            raise RunError("no usable models in %s; run `lowresseg models` to see why" % repo.root)
        if self.volume is None:
            self.volume = read_volume(self.input_path, channel=self.channel, series=self.series,
                                      contrast=card_contrast(repo.card(names[0])))
        self.choice = choose_model(names, self.budget, lambda n: open_engine(n, self.repository, threads=self.threads),
                                   slices=axial_slices(self.volume), log=self.log)
        self.engine, self.model = self.choice.engine, self.choice.name

    # ------------------------------------------------------------------ execute

    def execute(self, progress=None, cancel=None, chunk=32):
        """Run the pipeline, ``chunk`` slices at a time; None if cancelled (nothing is written then)."""
        from LowResSegLib.inference.pipeline import segment

        if not self.planned:
            self.plan()
        t0 = time.perf_counter()
        self.segmentation = segment(self.volume, self.engine, chunk=chunk, progress=progress, cancel=cancel,
                                    keep_probabilities=False)  # outputs need labels only
        self.seconds = time.perf_counter() - t0
        if self.segmentation is not None:
            self.warnings.extend(result_warnings(self.segmentation))
            if getattr(self.segmentation, "review", False):  # an ensemble whose members disagree: say so
                self.warnings.append(self.segmentation.review_line())
        return self.segmentation

    # ------------------------------------------------------------------ commit

    def commit(self):
        """Write every output, all or none; returns the written paths."""
        from LowResSegLib.results.outputs import write_segmentation

        if self.segmentation is None:
            raise RunError("nothing to commit: the run was not executed or was cancelled")
        pairs = []
        try:
            if self.labels_out:
                staged = _stage_name(self.labels_out)
                pairs.append((staged, self.labels_out))
                write_segmentation(self.segmentation, staged, target=self.labels_out)
            if self.dicom_seg_out:
                from LowResSegLib.results.dicomseg import write_dicom_seg

                staged = _stage_name(self.dicom_seg_out)
                pairs.append((staged, self.dicom_seg_out))
                meta = self.volume.meta
                extra = None
                if hasattr(self.segmentation, "disagreement"):  # an ensemble: where its members disagree, too
                    from LowResSegLib.inference.ensemble import disagreement_segment

                    extra = [disagreement_segment(self.segmentation)]
                write_dicom_seg(self.segmentation.labels, meta["files"], self.engine.card, staged,
                                source_frames=meta.get("frames"), sources=self.seg_sources, target=self.dicom_seg_out,
                                extra_segments=extra)
            if self.uncertainty_out:
                from LowResSegLib.images.io import write_labels

                staged = _stage_name(self.uncertainty_out)
                pairs.append((staged, self.uncertainty_out))
                write_labels(self.segmentation.disagreement_percent(), self.segmentation.reference, staged,
                             target=self.uncertainty_out)
            commit_files(pairs, self.overwrite)  # inside: a SIGTERM just before it leaves no staged file either
        except BaseException:
            _remove_quietly(staged for staged, _ in pairs)
            raise
        self.written = [final for _, final in pairs]
        return self.written

    def run(self, progress=None, cancel=None):
        """plan -> execute -> commit; the Segmentation, or None if cancelled."""
        self.plan()
        if self.execute(progress, cancel) is None:
            return None
        self.commit()
        return self.segmentation

    def summary(self):
        """One row for a table or CSV: what ran on what, and what came out."""
        seg, meta = self.segmentation, (self.volume.meta if self.volume is not None else {})
        return {
            "input": self.input_path,
            "model": self.engine.card["name"] if self.engine is not None else self.model,
            "series": meta.get("series_instance_uid") or "",
            "series_description": meta.get("series_description") or "",
            "volume_ml": round(seg.volume_ml(), 2) if seg is not None else None,
            # an ensemble's review score (members' disagreement) and flag; empty for a single model
            "review_score": round(seg.review_score, 3) if hasattr(seg, "review_score") else "",
            "review": ("yes" if seg.review else "no") if hasattr(seg, "review") else "",
            "seconds": round(self.seconds, 2),
            "warnings": " | ".join(self.warnings),
            "outputs": " ".join(self.written),
        }
