"""Brain-tumour FLAIR phantoms on real anatomy, domain-randomised (SynthSeg spirit).

Anatomy is the MNI152 2009a symmetric template (T1 brain mask, GM and WM maps) that
nilearn ships offline, warped per case by a random affine + smooth deformation and
a tumour mass effect. A glioma is grown on it: an irregular core, optional
necrosis, and edema that spreads preferentially through white matter. Contrast is
FLAIR-like but every tissue intensity, texture, bias field, blur, noise level and
(sometimes) the slice thickness is random, so a model cannot learn the generator's
quirks and has to learn "hyperintense, mass-like region inside the brain".

Two styles: ``stripped`` (skull-stripped, exact-zero background, as in BraTS) and
``raw`` (what a scanner writes: CSF, skull with diploe and a fat/muscle scalp of
random thickness around the brain, a neck below it, Rician noise in the
background; the grid may cut the vertex). Tumours range
from 1 mL to ~1 L (median ~75 mL; the "capped" series stops at 250 mL), are sometimes multifocal, sometimes diffuse with soft borders,
and their FLAIR contrast runs from faint to bright; some cases have no tumour.

Label: whole tumour (core | necrosis | edema). The grid is BraTS-like 240×240×155
at 1 mm, or a clinical thick-slice grid (3-6 mm axial, coronal or sagittal slices).
Everything is deterministic given (seed, index); the style and grid draws come from
their own random streams, so ``style=``/``grid=`` give twins of one case.

MNI notice (keep with anything derived that is shipped): "Copyright (C) 1993-2009
Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software
and its documentation for any purpose and without fee is hereby granted, provided
that the above copyright notice appear in all copies. The authors and McGill
University make no representations about the suitability of this software for any
purpose. It is provided 'as is' without express or implied warranty."
"""

import os
from functools import lru_cache

import numpy as np

MNI_NOTICE = __doc__[__doc__.index("Copyright (C) 1993"):].strip().rstrip('"').replace("\n", " ")
BRATS_SHAPE_KJI = (155, 240, 240)
# MNI brain centre in LPS mm; the BraTS-like grid is centred on it.
_BRAIN_CENTRE_LPS = np.array([0.0, 17.0, 14.0])


@lru_cache(maxsize=1)
def mni_templates():
    """(t1, gm, wm) float32 arrays in nibabel (x, y, z) order, values 0..1, and the RAS affine."""
    import nibabel as nib
    import nilearn

    d = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    out = []
    for t in ("t1", "gm", "wm"):
        img = nib.load(os.path.join(d, "mni_icbm152_%s_tal_nlin_sym_09a_converted.nii.gz" % t))
        out.append(np.asarray(img.dataobj, dtype=np.float32) / 255.0)
    return out[0], out[1], out[2], img.affine.copy()


def _smooth_field(rng, shape, cell):
    """Zero-mean, unit-SD random field with correlation length ~``cell`` voxels.

    Coarse white noise, linearly up-sampled one axis at a time (three small matrix
    products: ~10x faster than scipy.ndimage.zoom on a 240x240x155 grid).
    """
    from LowResSegLib.images.geometry import bilinear_matrix

    f = rng.standard_normal([max(2, int(np.ceil(s / cell)) + 1) for s in shape]).astype(np.float32)
    for axis, n in enumerate(shape):
        f = np.moveaxis(np.tensordot(bilinear_matrix(f.shape[axis], n), f, axes=(1, axis)), 0, axis)
    f -= f.mean()
    return f / (f.std() + 1e-6)


def _rotation(rng, max_deg):
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


class PhantomCase(object):
    """One generated case: image and label (k, j, i), spacing (i, j, k) mm, IJK->LPS affine."""

    def __init__(self, image, label, affine, case_id, params):
        self.image, self.label, self.affine, self.case_id, self.params = image, label, affine, case_id, params


STYLES = ("auto", "stripped", "raw")
GRIDS = ("auto", "iso", "thick")
RAW_PROB = 0.5  # "auto" style: half the cases are raw heads
# Lesion series. ``sd``: the lesion signal drawn in SDs of the healthy brain (log-uniform) for
# FLAIR-like tissue contrast. "faint" reaches the low-grade-like lesions at 0.7-2 SD that real cases
# have and "default" never draws (its lesions measure about 1.2-4.2 SD once blur, bias and noise are
# added). ``floor_sd``: the least the label must show on average in the acquired image (soft borders,
# blur and noise pull a small lesion far below its drawn signal); a fainter case is acquired again from
# a stronger paint, so that no label sits on tissue that looks normal. ``tumour=False``: the healthy twins only. ``max_ml``: a whole
# tumour drawn larger (the default reaches ~1 L; real ones here are 60-220 mL) is grown less far, to
# 40-100 % of this volume. The default keeps its definition until the shipped models are retrained.
LESIONS = {
    "default": {"sd": (1.5, 7.0)},
    "faint": {"sd": (0.8, 2.5), "floor_sd": 0.7},
    "healthy": {"sd": (1.5, 7.0), "tumour": False},
    "capped": {"sd": (1.5, 7.0), "max_ml": 250.0},
}
THICK_PROB = 0.35  # "auto" grid: this share gets thick slices
HEALTHY_PROB = 0.15


def make_phantom(seed, index=0, style="auto", grid="auto", tumour=None, lesions="default"):
    """Generate case ``index`` of the phantom series ``seed`` (deterministic).

    ``style``: "stripped", "raw" or "auto" (random); ``grid``: "iso" (1 mm), "thick"
    (3-6 mm slices in a random orientation) or "auto". Fixing either gives the same
    anatomy, tumour and contrast: the twin of the "auto" case in another style or grid.
    ``tumour=False`` gives the healthy twin (same anatomy and acquisition, no lesion).
    ``lesions``: a key of :data:`LESIONS`; "faint" gives the same case with a fainter lesion,
    "healthy" its healthy twin, "capped" the same tumour grown to at most 250 mL.
    """
    if style not in STYLES or grid not in GRIDS:
        raise ValueError("style must be one of %s and grid one of %s" % (STYLES, GRIDS))
    if lesions not in LESIONS:
        raise ValueError("lesions must be one of %s" % ", ".join(LESIONS))
    series = LESIONS[lesions]
    from scipy import ndimage

    rng = np.random.default_rng([int(seed), int(index)])
    rng_style = np.random.default_rng([int(seed), int(index), 1])
    rng_grid = np.random.default_rng([int(seed), int(index), 2])
    raw = rng_style.random() < RAW_PROB if style == "auto" else style == "raw"
    thick = rng_grid.random() < THICK_PROB if grid == "auto" else grid == "thick"
    t1, gm, wm, mni_affine = mni_templates()
    shape = BRATS_SHAPE_KJI
    params = {}

    # --- anatomy: grid point (LPS mm) -> template voxel, with random warp -----------
    k, j, i = [np.arange(n, dtype=np.float32) for n in shape]
    origin = _BRAIN_CENTRE_LPS - np.array([119.5, 119.5, 77.0]) + rng.uniform(-6, 6, 3)
    rot = _rotation(rng, 8.0) * rng.uniform(0.9, 1.12)
    rot = rot @ np.diag(rng.uniform(0.95, 1.05, 3))
    cell = rng.uniform(18, 40)
    amp = rng.uniform(0.0, 4.0)
    disp = [(_smooth_field(rng, shape, cell) * amp) for _ in range(3)]

    # tumour centre: somewhere in cerebral white/grey matter of the *output* grid
    centre_idx = np.array([rng.uniform(60, 180), rng.uniform(50, 190), rng.uniform(45, 125)])  # i, j, k
    centre = origin + centre_idx
    core_r = float(np.exp(rng.uniform(np.log(3.5), np.log(30.0))))
    mass = rng.uniform(0.0, 0.35)

    P = np.stack(np.meshgrid(i, j, k, indexing="ij"), 0).transpose(0, 3, 2, 1)  # [3, k, j, i] (i, j, k)
    P += origin.reshape(3, 1, 1, 1).astype(np.float32)
    rel = P - centre.reshape(3, 1, 1, 1).astype(np.float32)
    d2 = (rel ** 2).sum(0)
    push = mass * np.exp(-d2 / (2 * (1.6 * core_r) ** 2))  # sample closer to the centre: tissue pushed out
    c = centre.reshape(3, 1, 1, 1).astype(np.float32)
    Q = np.einsum("ab,bkji->akji", rot.astype(np.float32), (P - c) * (1 - push)) + c
    for a in range(3):
        Q[a] += disp[a]
    del P
    # LPS -> RAS -> template voxel (x, y, z)
    ras = np.stack([-Q[0], -Q[1], Q[2]], 0)
    inv = np.linalg.inv(mni_affine)
    vox = np.einsum("ab,bkji->akji", inv[:3, :3].astype(np.float32), ras) + inv[:3, 3].reshape(3, 1, 1, 1).astype(np.float32)
    del Q, ras
    brain = ndimage.map_coordinates(t1, vox, order=1, cval=0.0) > 0.05
    p_gm = ndimage.map_coordinates(gm, vox, order=1, cval=0.0)
    p_wm = ndimage.map_coordinates(wm, vox, order=1, cval=0.0)
    del vox
    p_gm *= brain
    p_wm *= brain
    p_csf = np.clip(brain - p_gm - p_wm, 0, 1)

    # --- tumour (computed inside its bounding box only) ----------------------------------
    edema_mm = float(rng.uniform(2.0, 32.0)) if rng.random() < 0.9 else 0.0
    axes = rng.uniform(0.65, 1.4, 3)
    half = core_r * 1.4 * 1.6 + edema_mm * 1.6 + 8
    lo = [max(0, int(c_ - half)) for c_ in centre_idx[::-1]]
    hi = [min(n, int(c_ + half) + 1) for c_, n in zip(centre_idx[::-1], shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    bshape = tuple(b - a for a, b in zip(lo, hi))
    rrot = _rotation(rng, 90.0).astype(np.float32)
    relr = np.einsum("ab,bkji->akji", rrot, rel[(slice(None),) + box]) / axes.reshape(3, 1, 1, 1).astype(np.float32)
    dist = np.sqrt((relr ** 2).sum(0)) / core_r
    del relr, rel
    rough = rng.uniform(0.15, 0.6)
    n1 = _smooth_field(rng, bshape, rng.uniform(4, 12))
    b_brain = brain[box]
    core_shape = dist + rough * n1 * np.clip(dist, 0.3, 1.0)
    core = (core_shape < 1.0) & b_brain
    necrotic = None
    if rng.random() < 0.5 and core_r > 7:
        necrotic = (dist + 0.3 * _smooth_field(rng, bshape, 6)) < rng.uniform(0.3, 0.65)
    edema, edema_shape, edema_ok = np.zeros_like(core), None, None
    if edema_mm > 0 and core.any():
        spread = edema_mm * (0.35 + 0.9 * p_wm[box])
        n2 = _smooth_field(rng, bshape, rng.uniform(5, 15))
        edema_shape = 0.35 * edema_mm * n2 - spread  # edema where the distance to the core is below -edema_shape
        edema_ok = b_brain & (p_csf[box] < 0.6)
        edema = (ndimage.distance_transform_edt(~core) + edema_shape < 0) & edema_ok & ~core
    if series.get("max_ml") and (core | edema).sum() > series["max_ml"] * 1000.0:
        target = series["max_ml"] * 1000.0 * np.random.default_rng([int(seed), int(index), 3]).uniform(0.4, 1.0)
        core, edema = _shrink_tumour(core_shape, edema_shape, b_brain, edema_ok, target)
        params["shrunk_to_ml"] = round(float((core | edema).sum()) / 1000.0, 1)
    necrosis = core & necrotic if necrotic is not None else np.zeros_like(core)
    healthy = rng.random() < HEALTHY_PROB
    if tumour is None:
        tumour = series.get("tumour")
    if tumour is not None:
        healthy = not tumour
    if healthy:
        core, edema, necrosis = (np.zeros_like(core),) * 3
    satellite = np.zeros_like(core)
    multi, off, f_off, f_r = rng.random() < 0.2, rng.normal(0, 1, 3), rng.uniform(1.5, 3.0), rng.uniform(0.3, 0.7)
    if multi and not healthy:  # multifocal: a second, smaller focus (drawn always, so twins stay exact)
        off = off / (np.linalg.norm(off) + 1e-6) * f_off * core_r
        sc = np.array([(h_ - l_) / 2.0 for l_, h_ in zip(lo, hi)]) + off[::-1]  # box (k, j, i) centre + offset
        kk, jj, ii = np.ogrid[:bshape[0], :bshape[1], :bshape[2]]
        sr = core_r * f_r
        satellite = (((kk - sc[0]) ** 2 + (jj - sc[1]) ** 2 + (ii - sc[2]) ** 2) < sr ** 2) & b_brain
    label = np.zeros(shape, bool)
    label[box] = core | edema | necrosis | satellite
    params.update(core_radius_mm=round(core_r, 2), edema_mm=round(edema_mm, 2), healthy=bool(healthy),
                  necrosis=bool(necrosis.any()), mass_effect=round(mass, 3), multifocal=bool(satellite.any()))

    # --- contrast -----------------------------------------------------------------------
    sd_range = LESIONS["default"]["sd"]
    if rng.random() < 0.2:  # fully random tissue contrast (SynthSeg-style)
        i_csf, i_gm, i_wm = rng.uniform(0.02, 0.8, 3)
        base = max(i_csf, i_gm, i_wm)
    else:  # FLAIR-like: dark CSF, GM a little brighter than WM
        sd_range = series["sd"]
        i_csf = rng.uniform(0.02, 0.25)
        i_wm = rng.uniform(0.25, 0.5)
        i_gm = i_wm + rng.uniform(-0.02, 0.2)
        base = max(i_gm, i_wm)
    # Lesion signal in SDs of the healthy brain, faint low-grade-like to bright: drawn 1.5-7 (LESIONS),
    # about 1.2-4.2 once blur, bias and noise are added; real BraTS FLAIR measures 1.5-4.6 (brain
    # statistics without the tumour). A fixed offset instead made lesions that vanished in a brain
    # with a wide random tissue contrast: labels no reader could see.
    contrast_sd = float(np.exp(rng.uniform(np.log(sd_range[0]), np.log(sd_range[1]))))
    tex = rng.uniform(0.0, 0.15)
    t_field = _smooth_field(rng, shape, rng.uniform(2, 6))
    img = (p_csf * i_csf + p_gm * i_gm + p_wm * i_wm) * (1 + tex * t_field)
    tissue = img[brain & ~label] if (brain & ~label).any() else np.array([base], np.float32)
    contrast = max(0.03, float(tissue.mean()) + contrast_sd * float(tissue.std()) - base)
    i_edema = base + contrast
    # the whole-tumour label is what FLAIR shows bright: the core is at least as bright as the
    # oedema's lower half (a core darker than the brain made labels no reader could see)
    i_core = base + contrast * rng.uniform(0.6, 2.0)
    i_nec = rng.uniform(0.03, 0.8)
    ttex = rng.uniform(0.05, 0.3)
    t_field2 = _smooth_field(rng, bshape, rng.uniform(2, 8))
    sub = unpainted = img[box]
    soft = rng.uniform(0.5, 1.5) if rng.random() < 0.75 else rng.uniform(2.0, 4.0)  # diffuse borders
    for mask, val in ((edema, i_edema), (satellite, i_edema), (core, i_core), (necrosis, i_nec)):
        if mask.any():
            frac = ndimage.gaussian_filter(mask.astype(np.float32), soft)
            sub = sub * (1 - frac) + frac * val * (1 + ttex * t_field2)
    paint = sub - unpainted
    img[box] = sub
    del t_field, t_field2, n1
    img = np.clip(img, 0, None) * brain
    params.update(contrast=round(contrast, 3), contrast_sd=round(contrast_sd, 2), border_mm=round(soft, 2))
    if raw:
        img = _add_head(img, brain, i_csf, max(i_gm, i_wm), rng_style)

    # --- acquisition: blur / in-plane resolution loss, bias, gamma, noise --------------
    acquisition = _draw_acquisition(rng, shape, brain.any())
    painted = img
    img = _acquire(painted, brain, raw, acquisition)
    if series.get("floor_sd") and label.any():
        img = _lift_to_floor(img, painted, paint, box, brain, label, raw, acquisition, series["floor_sd"], params)

    spacing = np.array([1.0, 1.0, 1.0])
    label = label.astype(np.uint8)
    orientation = "axial"
    if thick:  # clinical 2-D acquisition: slab-average along one axis
        t = int(rng_grid.choice([3, 4, 5, 6]))
        axis = int(rng_grid.choice([0, 1, 2], p=[0.6, 0.2, 0.2]))  # k (axial), j (coronal), i (sagittal)
        orientation = ("axial", "coronal", "sagittal")[axis]
        img, label = _slabs(img, t, axis), (_slabs(label.astype(np.float32), t, axis) >= 0.5).astype(np.uint8)
        origin = origin + np.eye(3)[2 - axis] * (t - 1) / 2.0
        spacing[2 - axis] = t
    params.update(style="raw" if raw else "stripped", orientation=orientation,
                  slice_thickness_mm=float(spacing.max()))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    case_id = "phantom_s%d_%04d%s" % (seed, index, "" if lesions == "default" else "_" + lesions)
    return PhantomCase(img.astype(np.float32), label, affine, case_id, params)


def _shrink_tumour(core_shape, edema_shape, brain, edema_ok, target):
    """Core and oedema grown less far (same shapes, lower thresholds) until they hold about ``target`` voxels."""
    from scipy import ndimage

    def masks(t):  # t in (0, 1]: the share of the drawn extent
        core = (core_shape < t) & brain
        if edema_shape is None or not core.any():
            return core, np.zeros_like(core)
        return core, (ndimage.distance_transform_edt(~core) + edema_shape * t < 0) & edema_ok & ~core

    lo, hi, best = 0.0, 1.0, None
    for _ in range(8):  # bisection: the tumour grows with t
        mid = 0.5 * (lo + hi)
        core, edema = masks(mid)
        if (core | edema).sum() <= target:
            lo, best = mid, (core, edema)
        else:
            hi = mid
    return best if best is not None else masks(hi)


def _draw_acquisition(rng, shape, has_brain):
    """The random draws of the acquisition (in the generator's historical order), applied by _acquire."""
    a = {"sig": rng.uniform(0, 1.0), "sig_ip": None}
    if rng.random() < 0.2:
        a["sig_ip"] = rng.uniform(0.8, 1.8)
    amp = rng.uniform(0.0, 0.25)
    a["bias"] = np.exp(amp * _smooth_field(rng, shape, rng.uniform(60, 140)))
    a["gamma"] = np.exp(rng.normal(0, 0.2))
    a["noise"] = rng.uniform(0.004, 0.05) if has_brain else 0.0
    a["n_re"] = rng.standard_normal(shape, dtype=np.float32)
    a["n_im"] = rng.standard_normal(shape, dtype=np.float32)
    a["scale"] = rng.uniform(200, 2000)
    return a


def _acquire(img, brain, raw, a):
    """Blur or in-plane resolution loss, bias, gamma, Rician noise and the scanner's scale."""
    from scipy import ndimage

    if a["sig_ip"] is not None:
        img = ndimage.gaussian_filter(img, (a["sig"] * 0.5, a["sig_ip"], a["sig_ip"]))
    elif a["sig"] > 0.2:
        img = ndimage.gaussian_filter(img, a["sig"])
    img = img * a["bias"]
    img = np.clip(img, 0, None) ** a["gamma"]
    noise = a["noise"] * float(np.percentile(img[brain], 95)) if a["noise"] else 0.0
    img = np.sqrt((img + a["n_re"] * noise) ** 2 + (a["n_im"] * noise) ** 2)  # Rician
    if not raw:
        img = img * brain  # skull-stripped: the background is exactly 0
    return (img * a["scale"]).astype(np.float32)


def shown_contrast_sd(image, label, brain):
    """How far the label stands out in the image: (its mean - healthy brain's mean) / healthy SD."""
    rest = image[brain & ~label].astype(np.float64)
    if not label.any() or rest.size == 0:
        return float("nan")
    return float((image[label].astype(np.float64).mean() - rest.mean()) / (rest.std() or 1.0))


def _lift_to_floor(img, painted, paint, box, brain, label, raw, acquisition, floor_sd, params):
    """Re-acquire with a stronger paint until the label stands ``floor_sd`` SDs out (at most 8x).

    Soft borders, blur, bias and noise can leave a drawn lesion at a few tenths of an SD: a label on
    tissue that looks normal, which teaches a model to mark normal tissue.
    """
    lab = label > 0
    shown = shown_contrast_sd(img, lab, brain)
    params["shown_sd"] = round(shown, 2)
    gain = 1.0
    for _ in range(3):
        if shown >= floor_sd or gain >= 8.0:
            break
        gain = min(8.0, gain * (floor_sd * 1.1 / shown if shown > floor_sd / 8 else 8.0))
        again = painted.copy()
        b = brain[box]
        again[box][b] = np.clip(painted[box] + (gain - 1.0) * paint, 0, None)[b]
        img = _acquire(again, brain, raw, acquisition)
        shown = shown_contrast_sd(img, lab, brain)
        params.update(paint_gain=round(gain, 2), shown_sd=round(shown, 2))
    return img


def _slabs(vol, t, axis):
    """Average ``t`` consecutive slices along ``axis`` (a thick 2-D acquisition)."""
    n = vol.shape[axis] // t
    v = np.moveaxis(vol, axis, 0)[: n * t]
    v = v.reshape((n, t) + v.shape[1:]).mean(1)
    return np.ascontiguousarray(np.moveaxis(v, 0, axis)).astype(np.float32)


def _add_head(img, brain, i_csf, i_tissue, rng):
    """CSF, skull (with diploe), scalp (fat and muscle) and a neck around a brain-only image.

    Layer thicknesses vary smoothly over the head; distances are taken on a 2 mm grid.
    """
    from scipy import ndimage

    shape = brain.shape

    def distance_mm(mask):  # to the mask, on a 2 mm grid, repeated back to 1 mm
        d2 = ndimage.distance_transform_edt(~mask[::2, ::2, ::2], sampling=2.0)
        return np.repeat(np.repeat(np.repeat(d2, 2, 0), 2, 1), 2, 2)[: shape[0], : shape[1], : shape[2]]

    d = distance_mm(brain)
    wob = 1.0 + 0.3 * _smooth_field(rng, shape, 40)
    t_csf, t_skull, t_scalp = rng.uniform(1.0, 4.0), rng.uniform(4.0, 9.0), rng.uniform(3.0, 10.0)
    # the neck: below the brain, a column under the lower half of the brain's silhouette
    ks = np.nonzero(brain.any(axis=(1, 2)))[0]
    neck = np.zeros(shape, bool)
    if len(ks):
        k0 = int(ks[0] + 0.25 * (ks[-1] - ks[0]))
        sil = ndimage.binary_erosion(brain[k0:int(ks[0] + 0.45 * (ks[-1] - ks[0]) + 1)].any(0), iterations=8)
        neck[:k0] = sil
    if neck.any():
        d = np.minimum(d, distance_mm(neck) + 0.5 * t_csf)
    csf = (d > 0) & (d <= t_csf * wob)
    skull = (d > t_csf * wob) & (d <= (t_csf + t_skull) * wob)
    scalp = (d > (t_csf + t_skull) * wob) & (d <= (t_csf + t_skull + t_scalp) * wob)
    i_bone = rng.uniform(0.0, 0.12) * i_tissue
    i_diploe = rng.uniform(0.2, 1.0) * i_tissue if rng.random() < 0.6 else i_bone
    i_fat = rng.uniform(0.7, 1.8) * i_tissue
    i_muscle = rng.uniform(0.3, 0.8) * i_tissue
    mid = np.abs(d - (t_csf + 0.5 * t_skull) * wob) < 0.25 * t_skull * wob
    tex = _smooth_field(rng, shape, rng.uniform(3, 8))
    fat = 1.0 / (1.0 + np.exp(-3.0 * (tex + rng.uniform(-0.8, 0.8))))
    out = img.copy()
    out[csf] = i_csf * (1 + 0.1 * tex[csf])
    out[skull] = np.where(mid[skull], i_diploe, i_bone)
    soft = fat * i_fat + (1 - fat) * i_muscle
    out[scalp] = soft[scalp]
    out[neck & ~brain] = soft[neck & ~brain]
    return np.clip(out, 0, None).astype(np.float32)

#: The twins of one held-out case: the same brain and tumour as a stripped volume, as a raw head, as a raw
#: head on a clinical thick-slice grid, and as a raw head without the tumour.
VARIANTS = {
    "stripped": dict(style="stripped", grid="iso"),
    "raw": dict(style="raw", grid="iso"),
    "raw-thick": dict(style="raw", grid="thick"),
    "healthy-raw": dict(style="raw", grid="iso", tumour=False),
}


def cached_phantom(seed, idx, variant):
    """make_phantom(seed, idx, **VARIANTS[variant]), kept on disk beside the slice cache (~5 s a case)."""
    import json

    from LowResSegLib.training.cache import CACHE_VERSION, default_cache_dir  # the version is bumped whenever the generator changes

    path = os.path.join(default_cache_dir(), "bench-phantoms-v%d" % CACHE_VERSION, "%d_%04d_%s.npz" % (seed, idx, variant))
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as z:
            return PhantomCase(z["image"], z["label"], z["affine"], str(z["case_id"]), json.loads(str(z["params"])))
    case = make_phantom(seed, idx, **VARIANTS[variant])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".part.npz", image=case.image, label=case.label, affine=case.affine,
             case_id=case.case_id, params=json.dumps(case.params))
    os.replace(path + ".part.npz", path)
    return case


def write_phantoms(outdir, n, seed=0, progress=True, style="auto", grid="auto"):
    """Write ``n`` cases as ``images/`` + ``labels/`` NIfTI pairs (and the MNI notice)."""
    import SimpleITK as sitk
    from tqdm import tqdm

    for sub in ("images", "labels"):
        os.makedirs(os.path.join(outdir, sub), exist_ok=True)
    with open(os.path.join(outdir, "NOTICE-MNI152.txt"), "w") as f:
        f.write("Derived from the MNI152 2009a template (via nilearn).\n" + MNI_NOTICE + "\n")
    paths = []
    for idx in tqdm(range(n), desc="phantoms", unit="case", disable=not progress):
        case = make_phantom(seed, idx, style=style, grid=grid)
        for sub, arr in (("images", case.image), ("labels", case.label)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing([float(abs(case.affine[a, a])) for a in range(3)])
            img.SetOrigin([float(v) for v in case.affine[:3, 3]])
            path = os.path.join(outdir, sub, case.case_id + ".nii.gz")
            tmp = path + ".part.nii.gz"
            sitk.WriteImage(img, tmp, True)
            os.replace(tmp, path)
        paths.append(os.path.join(outdir, "images", case.case_id + ".nii.gz"))
    return paths
