"""Axial-slice training data: volumes -> canonical, normalised, square slices, cached on disk.

The cache holds each case at its native square in-plane size S. Inputs and targets
are made per batch from those S×S slices with :func:`LowResSegLib.geometry.area_resample`,
the same function inference uses, so the model sees exactly what it will see later:
input = area(S -> r), target at each head scale s = area(label, S -> s) (soft at the
coarse scales, as in the paper's deep supervision).
"""

import hashlib
import json
import os

import numpy as np

from LowResSegLib.geometry import area_resample, pad_to_square, to_canonical
from LowResSegLib.intensity import ZSCORE_NONZERO, normalize_volume

CACHE_VERSION = 1


def parse_data_spec(spec):
    """``phantom:N[:seed]``, ``msd:PATH`` or ``folder:PATH`` -> dict."""
    kind, _, rest = spec.partition(":")
    if kind == "phantom":
        parts = rest.split(":") if rest else []
        try:
            n = int(parts[0]) if parts else 40
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError("bad data spec %r: use phantom:N[:seed], e.g. phantom:40:1" % spec)
        return {"kind": "phantom", "n": n, "seed": seed}
    if kind in ("msd", "folder") and rest:
        if not os.path.isdir(rest):
            raise FileNotFoundError("data folder not found: %s" % rest)
        return {"kind": kind, "path": os.path.abspath(rest)}
    raise ValueError("bad data spec %r: use phantom:N[:seed], msd:PATH or folder:PATH" % spec)


def iter_cases(spec, modality="FLAIR", label="wt", limit=None):
    """Yield cases with ``case_id``, ``image`` (k,j,i), ``label`` and ``affine`` (IJK->LPS)."""
    d = parse_data_spec(spec) if isinstance(spec, str) else spec
    if d["kind"] == "phantom":
        from LowResSegLib.training.phantom import make_phantom

        n = d["n"] if limit is None else min(limit, d["n"])
        for idx in range(n):
            yield make_phantom(d["seed"], idx)
    elif d["kind"] == "msd":
        from LowResSegLib.training.sources import iter_msd_cases

        for c in iter_msd_cases(d["path"], modality=modality, label=label, limit=limit):
            yield c
    else:
        from LowResSegLib.training.sources import iter_folder_cases

        for c in iter_folder_cases(d["path"], limit=limit, label=label):
            yield c


def volume_to_slices(image, label, affine):
    """Canonical axial orientation, normalisation, square FOV; keeps slices with brain."""
    img, _ = to_canonical(image, affine)
    lab, _ = to_canonical(label, affine)
    img = pad_to_square(normalize_volume(img))
    lab = pad_to_square((lab > 0).astype(np.uint8))
    keep = (img != 0).mean(axis=(1, 2)) > 0.01
    return img[keep].astype(np.float16), lab[keep]


def _fingerprint(d):
    """Names, sizes and mtimes of a data folder's files: a changed folder gets a new cache."""
    if "path" not in d:
        return None
    h = hashlib.sha256()
    for top, dirs, files in sorted(os.walk(d["path"])):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(top, f))
            h.update(("%s|%d|%d;" % (os.path.relpath(os.path.join(top, f), d["path"]), st.st_size,
                                     int(st.st_mtime))).encode())
    return h.hexdigest()


class SliceCache(object):
    """All slices of a data spec, one array pair per case, built once and reused."""

    def __init__(self, images, labels, case_ids):
        self.images, self.labels, self.case_ids = images, labels, case_ids

    @classmethod
    def build(cls, spec, cache_dir, modality="FLAIR", label="wt", progress=True):
        from tqdm import tqdm

        d = parse_data_spec(spec)
        key = json.dumps({"spec": d, "files": _fingerprint(d), "modality": modality, "label": label,
                          "norm": ZSCORE_NONZERO, "v": CACHE_VERSION}, sort_keys=True)
        path = os.path.join(cache_dir, "slices-%s.npz" % hashlib.sha256(key.encode()).hexdigest()[:16])
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:
                ids = [str(s) for s in z["case_ids"]]
                return cls([z["img_%d" % i] for i in range(len(ids))],
                           [z["lab_%d" % i] for i in range(len(ids))], ids)
        images, labels, ids = [], [], []
        total = d.get("n")
        for case in tqdm(iter_cases(d, modality, label), total=total, desc="slicing " + spec,
                         unit="case", disable=not progress):
            im, lb = volume_to_slices(case.image, case.label, case.affine)
            images.append(im)
            labels.append(lb)
            ids.append(case.case_id)
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {"case_ids": np.array(ids)}
        for i, (im, lb) in enumerate(zip(images, labels)):
            arrays["img_%d" % i] = im
            arrays["lab_%d" % i] = lb
        tmp = path + ".part.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return cls(images, labels, ids)

    def split(self, val_fraction, seed=0):
        """Case-level split (never slices of one case on both sides)."""
        order = np.random.default_rng(seed).permutation(len(self.case_ids))
        n_val = max(1, int(round(len(order) * val_fraction))) if val_fraction > 0 else 0
        pick = lambda idx: SliceCache([self.images[i] for i in idx], [self.labels[i] for i in idx],
                                      [self.case_ids[i] for i in idx])
        return pick(sorted(order[n_val:])), pick(sorted(order[:n_val]))

    def index(self):
        """(case, slice, has_tumour) for every stored slice."""
        rows = []
        for c, lb in enumerate(self.labels):
            fg = lb.reshape(lb.shape[0], -1).any(1)
            rows.extend((c, k, bool(f)) for k, f in enumerate(fg))
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def sample(self, rng, neg_ratio):
        """Every tumour slice plus ``neg_ratio`` × as many random tumour-free slices."""
        idx = self.index()
        pos, neg = idx[idx[:, 2] == 1], idx[idx[:, 2] == 0]
        n_neg = min(len(neg), int(round(neg_ratio * len(pos))))
        chosen = np.concatenate([pos, neg[rng.choice(len(neg), n_neg, replace=False)]]) if n_neg else pos
        return chosen[rng.permutation(len(chosen))]


def augment_slice(im, lb, rng):
    """Random geometry and acquisition for one normalised slice (and its label).

    The phantoms already vary contrast per case; this varies it per slice too
    (gamma, bias, noise, blur) and adds rotation / scale / shift / flip, so the
    model cannot memorise a case's look.
    """
    from scipy import ndimage

    s = im.shape[0]
    if rng.random() < 0.5:
        im, lb = im[:, ::-1], lb[:, ::-1]
    if rng.random() < 0.8:
        ang = np.deg2rad(rng.uniform(-15, 15))
        scale = rng.uniform(0.85, 1.15)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / scale
        centre = (np.array([s, s]) - 1) / 2.0
        offset = centre - rot @ centre + rng.uniform(-0.05, 0.05, 2) * s
        im = ndimage.affine_transform(im, rot, offset, order=1, cval=0.0)
        lb = ndimage.affine_transform(lb, rot, offset, order=1, cval=0.0)
    brain = im != 0
    if not brain.any():
        return np.ascontiguousarray(im), np.ascontiguousarray(lb)
    v = im[brain]
    lo, hi = float(v.min()), float(v.max())
    if hi > lo and rng.random() < 0.7:  # gamma on the brain's intensity range
        u = (v - lo) / (hi - lo)
        v = lo + (hi - lo) * u ** np.exp(rng.normal(0, 0.3))
    yy, xx = np.nonzero(brain)
    y, x = (yy / s - 0.5), (xx / s - 0.5)
    c = rng.normal(0, 0.15, 5)  # smooth multiplicative bias (2nd-order polynomial)
    v = v * np.exp(c[0] * x + c[1] * y + c[2] * x * y + c[3] * x * x + c[4] * y * y)
    v = v * rng.uniform(0.85, 1.15) + rng.uniform(-0.2, 0.2)
    out = np.zeros_like(im)
    out[brain] = v
    if rng.random() < 0.3:
        out = np.where(brain, ndimage.gaussian_filter(out, rng.uniform(0.3, 1.2)), 0.0)
    if rng.random() < 0.5:
        out = np.where(brain, out + rng.normal(0, rng.uniform(0.02, 0.15), out.shape), 0.0)
    return out.astype(np.float32), np.clip(lb, 0.0, 1.0)


def make_batch(cache, rows, input_size, scales, rng=None, crop=None):
    """Model input [B,1,r,r] and soft targets per scale [B,1,s,s] (float32 numpy).

    ``rng`` enables augmentation (:func:`augment_slice`). ``crop``
    (full-resolution models only) trains on a random crop of the R-grid to save time.
    """
    imgs, labs = [], []
    for c, k, _ in rows:
        im = cache.images[c][k].astype(np.float32)
        lb = cache.labels[c][k].astype(np.float32)
        if rng is not None:
            im, lb = augment_slice(im, lb, rng)
        imgs.append(im)
        labs.append(lb)
    imgs, labs = np.stack(imgs), np.stack(labs)
    x = area_resample(imgs, input_size)[:, None].astype(np.float32)
    ys = [area_resample(labs, s)[:, None].astype(np.float32) for s in scales]
    if crop:
        size = input_size
        if crop >= size:
            return x, ys
        xs, ts = [], [[] for _ in ys]
        for b in range(x.shape[0]):
            fg = np.argwhere(ys[-1][b, 0] > 0.5)
            if len(fg) and (rng is None or rng.random() < 0.7):
                cy, cx = fg[(rng or np.random.default_rng(0)).integers(len(fg))]
            else:
                cy, cx = (rng or np.random.default_rng(0)).integers(0, size, 2)
            y0 = int(np.clip(cy - crop // 2, 0, size - crop))
            x0 = int(np.clip(cx - crop // 2, 0, size - crop))
            xs.append(x[b, :, y0:y0 + crop, x0:x0 + crop])
            for t, y in zip(ts, ys):
                t.append(y[b, :, y0:y0 + crop, x0:x0 + crop])
        return np.stack(xs), [np.stack(t) for t in ts]
    return x, ys
