"""An ensemble of models that see the scan at different resolutions, and where they disagree.

An ensemble card (``"kind": "ensemble"``, :mod:`LowResSegLib.repository.modelstore`) names member models
of the same repository. :class:`Ensemble` runs them on **one** prepared volume (normalised once per
normalisation method; the shipped members share one), then:

* **labels**: the mean of the members' tumour probabilities on the source grid, above the ensemble card's
  threshold (:func:`~LowResSegLib.repository.modelstore.card_threshold`), then the card's post-processing;
* **disagreement map** (:attr:`EnsembleSegmentation.disagreement`): per voxel, the fraction of members
  that call it tumour (each by its own card's threshold and post-processing) where that fraction lies
  strictly between 0 and 1, else 0. With three members: 0, 1/3 or 2/3. Its non-zero voxels are the
  "members disagree" region;
* **review score** (:func:`review_score`): the disagreeing volume over the volume any member calls
  tumour (0 when none does): 0 when all members draw the same mask, 1 when no voxel is shared by all of
  them. A case whose score reaches the card's ``ensemble.review.threshold`` (default
  :data:`REVIEW_THRESHOLD`) is flagged for review.

The members are ordinary engines, local or remote (:func:`open_engine`): an edge server needs no
notion of ensembles. :func:`LowResSegLib.inference.pipeline.segment` hands an ensemble the volume
(``segment_volume``), so every front end that segments through the pipeline runs ensembles too.
numpy + onnxruntime only. Python 3.9+.
"""

import time

import numpy as np

from LowResSegLib.inference.pipeline import Segmentation
from LowResSegLib.repository.modelstore import ModelRepository, ModelStoreError, card_threshold, is_ensemble

__all__ = ["Ensemble", "EnsembleSegmentation", "open_engine", "review_score", "disagreement_map", "review_threshold",
           "disagreement_segment",
           "REVIEW_THRESHOLD", "DISAGREE_SEGMENT"]

#: The review flag's threshold when the card names none (the shipped card carries the one chosen on
#: validation patients, docs/BENCHMARKS.md "Ensemble").
REVIEW_THRESHOLD = 0.5
#: The name of the extra segment that holds the disagreeing voxels (Slicer, .seg.nrrd, DICOM-SEG).
DISAGREE_SEGMENT = "members disagree"


def open_engine(name, repository=None, threads=0, engine_for=None):
    """The engine for model ``name``: an :class:`Ensemble` of member engines when its card is an ensemble.

    ``engine_for(member)`` makes a member's engine (e.g. a RemoteEngine on one server); by default a
    :class:`~LowResSegLib.inference.engines.LocalEngine` of ``repository``.
    """
    from LowResSegLib.inference.engines import LocalEngine

    def make(n):
        return engine_for(n) if engine_for is not None else LocalEngine(n, repository, threads=threads)

    repo = ModelRepository(repository)
    if name in repo.names() and repo.is_ensemble(name):
        card = repo.card(name)  # validated against its members
        engines = []
        try:
            for member in card["ensemble"]["members"]:
                engines.append(make(member))
        except BaseException:
            for e in engines:
                getattr(e, "close", lambda: None)()
            raise
        return Ensemble(card, engines)
    return make(name)


def disagreement_segment(segmentation):
    """The "members disagree" region of an :class:`EnsembleSegmentation` as an extra DICOM-SEG segment
    (:func:`LowResSegLib.results.dicomseg.write_dicom_seg`): the tumour class's codes, its own name and colour."""
    cls = segmentation.card["classes"][0]
    return {"name": DISAGREE_SEGMENT, "color": [255, 215, 0], "category": cls["category"], "type": cls["type"],
            "description": "%s (review score %.2f)" % (DISAGREE_SEGMENT, segmentation.review_score),
            "mask": segmentation.disagreement > 0}


def review_threshold(card):
    """The review score at or above which a case is flagged: the card's ``ensemble.review.threshold``."""
    review = (card.get("ensemble") or {}).get("review") or {}
    return float(review.get("threshold", REVIEW_THRESHOLD))


def disagreement_map(votes, n):
    """Fraction of ``n`` members voting tumour where it is strictly between 0 and 1, else 0 (float32)."""
    votes = np.asarray(votes)
    out = votes.astype(np.float32) / float(n)
    out[(votes == 0) | (votes >= n)] = 0.0
    return out


def review_score(votes, n):
    """Disagreeing volume / union: voxels where 0 < votes < n over voxels where votes > 0; 0 for no union."""
    votes = np.asarray(votes)
    union = int(np.count_nonzero(votes))
    if union == 0:
        return 0.0
    return float(np.count_nonzero(votes < n) - np.count_nonzero(votes == 0)) / union


class EnsembleSegmentation(Segmentation):
    """What :meth:`Ensemble.segment_volume` returns: a Segmentation (labels, probabilities, card, timings,
    reference) plus ``member_names``, ``member_volumes_ml``, ``member_labels`` (each member's uint8 mask, for
    measurement), ``votes`` (uint8: members voting tumour),
    ``disagreement`` (see :func:`disagreement_map`), ``review_score``, ``review_threshold``, ``review``
    (the flag)."""

    def __init__(self, labels, probabilities, card, timings, reference, member_names, member_volumes_ml, votes,
                 threshold, member_labels=None):
        Segmentation.__init__(self, labels, probabilities, card, timings, reference)
        self.member_labels = member_labels
        self.member_names, self.member_volumes_ml = list(member_names), list(member_volumes_ml)
        n = len(self.member_names)
        self.votes = votes
        self.disagreement = disagreement_map(votes, n)
        self.review_score = review_score(votes, n)
        self.review_threshold = float(threshold)
        self.review = self.review_score >= self.review_threshold

    def disagreement_volume(self):
        """The disagreement map as a float32 Volume on the source grid."""
        return self.reference.with_array(self.disagreement, model=self.card["name"])

    def disagreement_percent(self):
        """The disagreement map in whole percent (uint8, 0..100): what ``--uncertainty`` writes."""
        return np.rint(100.0 * self.disagreement).astype(np.uint8)

    def disagree_ml(self):
        return float(np.count_nonzero(self.disagreement)) * self.voxel_ml

    def review_line(self):
        """One line for a user: the score, the threshold and whether to review."""
        return ("members disagree on %.0f%% of the tumour they find (%.1f mL; review score %.2f, flag at %.2f)%s"
                % (100 * self.review_score, self.disagree_ml(), self.review_score, self.review_threshold,
                   ": REVIEW this case" if self.review else ""))


class Ensemble(object):
    """An ensemble model as an engine: ``card`` (the ensemble card), ``members`` (engines), and
    :meth:`segment_volume`. It has no graph: :meth:`infer` refuses."""

    output = None

    def __init__(self, card, members):
        if not is_ensemble(card):
            raise ModelStoreError("model %s is not an ensemble" % card.get("name"))
        names = list(card["ensemble"]["members"])
        got = [m.card["name"] for m in members]
        if got != names:
            raise ModelStoreError("ensemble %s needs members %s, got %s" % (card["name"], ", ".join(names),
                                                                             ", ".join(got)))
        want = [(c["index"], c["name"]) for c in card["classes"]]
        for m in members:  # a remote member's card comes from its server: the same check as the repository's
            have = [(c.get("index"), c.get("name")) for c in m.card["classes"]]
            if have != want:
                raise ModelStoreError("ensemble %s: member %s segments %s, the ensemble %s; members must give the "
                                      "same classes" % (card["name"], m.card["name"], have, want))
        self.card, self.members = card, list(members)

    def infer(self, batch):
        raise TypeError("ensemble %s has no graph of its own; segment a volume with it (pipeline.segment)"
                        % self.card["name"])

    def close(self):
        for m in self.members:
            getattr(m, "close", lambda: None)()

    def calibration_identity(self):
        """What makes this ensemble's times what they are: its members' engines (modelchoice's cache key)."""
        from LowResSegLib.inference.modelchoice import engine_identity

        return "ensemble of [%s]" % "; ".join("%s: %s" % (m.card["name"], engine_identity(m)) for m in self.members)

    def segment_volume(self, volume, chunk=32, progress=None, cancel=None, keep_probabilities=True):
        """:class:`EnsembleSegmentation` of ``volume``, or None if cancelled. Each member's probabilities come
        back to the source grid; the volume is prepared once per normalisation method."""
        from LowResSegLib.inference import postprocess
        from LowResSegLib.inference.pipeline import postprocessing_of, prepare_slices, segment

        card = self.card
        post = postprocessing_of(card)
        if not np.all(np.isfinite(volume.array)):
            raise ValueError("the volume has NaN/Inf voxels; read it with LowResSegLib.images.io.read_volume, "
                             "which replaces them by 0 and says so")
        t0 = time.perf_counter()
        prepared = {}
        t_pre = 0.0
        n = len(self.members)
        mean = votes = None
        volumes, timings, member_labels = [], {}, []
        for i, member in enumerate(self.members):
            method = member.card["normalization"]["method"]
            if method not in prepared:
                t = time.perf_counter()
                prepared[method] = prepare_slices(volume, member.card)
                t_pre += time.perf_counter() - t

            def member_progress(done, count, i=i):
                if progress is not None:
                    progress(i * count + done, n * count)

            # floor 0: the probabilities are those of the full path exactly, resampled only where the 8-bit
            # output is not 0 (most slices and most of each slice hold no tumour)
            seg = segment(volume, member, chunk=chunk, progress=member_progress, cancel=cancel,
                          keep_probabilities=True, prepared=prepared[method], probability_floor=0.0)
            if seg is None:
                return None
            if mean is None:
                mean = seg.probabilities.astype(np.float32, copy=True)
                votes = (seg.labels > 0).astype(np.uint8)
            else:
                mean += seg.probabilities
                votes += seg.labels > 0
            volumes.append(seg.volume_ml())
            member_labels.append(seg.labels)
            timings[member.card["name"]] = seg.timings
        if cancel is not None and cancel():
            return None
        t = time.perf_counter()
        mean /= float(n)
        threshold = card_threshold(card)
        labels = (mean > threshold).astype(np.uint8)
        if post:
            labels = postprocess.drop_weak_components(labels, mean, volume.voxel_ml, post["min_component_ml"],
                                                      post["min_component_peak"], threshold)
        t_post = time.perf_counter() - t
        total_s = time.perf_counter() - t0
        nk = max(1, int(max(tm["slices"] for tm in timings.values())))
        timing = {
            "slices": nk, "members": timings,
            "preprocess_ms": 1000 * t_pre + sum(tm["preprocess_ms"] for tm in timings.values()),
            "infer_ms": sum(tm["infer_ms"] for tm in timings.values()),
            "postprocess_ms": 1000 * t_post + sum(tm["postprocess_ms"] for tm in timings.values()),
            "total_s": total_s, "ms_per_slice": 1000 * total_s / nk,
            "volumes_per_s": 1.0 / total_s if total_s > 0 else float("inf"),
        }
        return EnsembleSegmentation(labels, mean if keep_probabilities else None, card, timing, volume,
                                    [m.card["name"] for m in self.members], volumes, votes, review_threshold(card),
                                    member_labels)
