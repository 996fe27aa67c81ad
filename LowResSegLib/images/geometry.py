"""In-plane resampling of square slices, shared by training and inference (numpy only).

The low-resolution input a model sees at inference must be made exactly as it was
in training, so both sides call :func:`area_resample`. Resampling is separable, so
each operation is one small matrix per axis: ``out = A_rows @ slice @ A_cols.T``.
That is exact, vectorised over a batch, and free of interpolation-library quirks.

Conventions: a batch of slices is ``[N, H, W]`` (rows, columns). Nothing here flips
or transposes an axis; tests check this with asymmetric phantoms.
"""

from functools import lru_cache

import numpy as np

__all__ = [
    "Volume",
    "area_matrix",
    "bilinear_matrix",
    "area_resample",
    "bilinear_resample",
    "apply_separable",
    "square_pad_widths",
    "pad_to_square",
    "crop_from_square",
    "canonical_transform",
    "to_canonical",
    "from_canonical",
]


class Volume(object):
    """A 3-D image: ``array`` in (k, j, i) order and ``affine`` mapping (i, j, k, 1) to LPS mm.

    ``meta`` carries reader facts that later stages need (source path, modality,
    DICOM series and frame-of-reference UIDs, SOP instance UIDs in k order).
    """

    def __init__(self, array, affine, meta=None):
        array = np.asarray(array)
        affine = np.asarray(affine, dtype=np.float64)
        if array.ndim != 3:
            raise ValueError("a Volume is 3-D, got %d-D with shape %s" % (array.ndim, array.shape))
        if affine.shape != (4, 4):
            raise ValueError("affine must be 4x4, got %s" % (affine.shape,))
        self.array, self.affine, self.meta = array, affine, dict(meta or {})

    @property
    def spacing(self):
        """Voxel size in mm along (i, j, k)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_ml(self):
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def spacing_kji(self):
        """Voxel size in mm in array-axis order (k, j, i): what the metrics take."""
        return self.spacing[::-1]

    @property
    def shape(self):
        return self.array.shape

    def with_array(self, array, **meta):
        """Same grid, other voxels (e.g. labels on the source geometry)."""
        m = dict(self.meta)
        m.update(meta)
        return Volume(array, self.affine, m)

    @classmethod
    def from_ras(cls, array, ijk_to_ras, meta=None):
        """A volume given as Slicer holds it: (k, j, i) voxels and an IJK->RAS matrix."""
        return cls(array, _LPS_FROM_RAS @ np.asarray(ijk_to_ras, dtype=np.float64), meta)

    @property
    def ijk_to_ras(self):
        """The IJK->RAS matrix Slicer wants (Slicer's world is RAS, ours is LPS)."""
        return _LPS_FROM_RAS @ self.affine


_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: RAS <-> LPS


@lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Output pixel o covers the input interval [o*s, (o+1)*s) with s = n_in/n_out;
    # its value is the overlap-weighted mean of the input pixels under it.
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    hi = lo + scale
    left = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, left + 1) - np.maximum(lo, left), 0.0, None)
    m = overlap / overlap.sum(axis=1, keepdims=True)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Half-pixel centres, edges clamped: identical to torch's
    # interpolate(mode="bilinear", align_corners=False) and ONNX Resize(linear, half_pixel).
    scale = n_in / n_out
    x = (np.arange(n_out) + 0.5) * scale - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    x0 = np.floor(x).astype(np.int64)
    x1 = np.minimum(x0 + 1, n_in - 1)
    w1 = x - x0
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, x0), 1.0 - w1)
    np.add.at(m, (rows, x1), w1)
    m.setflags(write=False)
    return m


def area_matrix(n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """``[n_out, n_in]`` box-averaging matrix; rows sum to 1 (mean-preserving)."""
    _check_sizes(n_in, n_out)
    return _area_matrix(int(n_in), int(n_out)).astype(dtype, copy=False)


def bilinear_matrix(n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """``[n_out, n_in]`` bilinear interpolation matrix (half-pixel centres)."""
    _check_sizes(n_in, n_out)
    return _bilinear_matrix(int(n_in), int(n_out)).astype(dtype, copy=False)


def _check_sizes(n_in, n_out):
    if int(n_in) < 1 or int(n_out) < 1:
        raise ValueError("resampling sizes must be positive, got %r -> %r" % (n_in, n_out))


def apply_separable(batch: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows @ batch[n] @ cols.T`` for every slice (and every leading index).

    Done as two large matrix products over the whole batch: numpy's broadcast
    ``rows @ batch`` runs slice by slice and was ~50x slower on a volume.
    """
    batch = np.asarray(batch)
    if batch.ndim < 2:
        raise ValueError("expected [..., H, W] slices, got shape %s" % (batch.shape,))
    if batch.shape[-2] != rows.shape[1] or batch.shape[-1] != cols.shape[1]:
        raise ValueError(
            "slice shape %s does not match resampling matrices %s, %s"
            % (batch.shape[-2:], rows.shape, cols.shape)
        )
    dtype = np.result_type(batch.dtype, np.float32)
    lead, (h, w) = batch.shape[:-2], batch.shape[-2:]
    flat = batch.reshape(-1, h, w).astype(dtype, copy=False)
    n = flat.shape[0]
    t = np.dot(flat.reshape(n * h, w), cols.T.astype(dtype, copy=False)).reshape(n, h, -1)
    out = np.tensordot(rows.astype(dtype, copy=False), t, axes=(1, 1))  # (h', n, w')
    return np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(lead + (rows.shape[0], cols.shape[0]))


def _target_shape(size):
    if np.isscalar(size):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def area_resample(batch: np.ndarray, size) -> np.ndarray:
    """Area (box) resample ``[..., H, W]`` to ``size`` (int or (h, w)).

    This is how a low-resolution acquisition sees the anatomy, and it is the one
    function that makes model inputs, in training and at inference alike.

    When the sizes share a factor g (240 -> 32: g = 16), the area matrix is g copies of one
    small block on its diagonal, and each axis is one product with that block: the same
    weights, 2-16x fewer operations than the dense matrix (equal to it within float32 rounding).
    """
    h, w = _target_shape(size)
    batch = np.asarray(batch)
    if batch.ndim < 2:
        raise ValueError("expected [..., H, W] slices, got shape %s" % (batch.shape,))
    big_h, big_w = batch.shape[-2:]
    dtype = np.result_type(batch.dtype, np.float32)
    if (big_h, big_w) == (h, w):  # the area matrix is the identity: a copy gives the same numbers, 10x cheaper
        return np.array(batch, dtype=dtype)
    row_block, col_block = _area_block(big_h, h, dtype.str), _area_block(big_w, w, dtype.str)
    if row_block is None and col_block is None:
        return apply_separable(batch, area_matrix(big_h, h), area_matrix(big_w, w))
    flat = np.ascontiguousarray(batch.reshape(-1, big_h, big_w), dtype=dtype)
    n = flat.shape[0]
    t = _along_last_axis(flat.reshape(n * big_h, big_w), col_block, area_matrix(big_w, w, dtype)).reshape(n, big_h, w)
    t = np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(n * w, big_h)
    t = _along_last_axis(t, row_block, area_matrix(big_h, h, dtype)).reshape(n, w, h)
    return np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(batch.shape[:-2] + (h, w))


@lru_cache(maxsize=64)
def _area_block(n_in: int, n_out: int, dtype: str):
    """The block the ``dtype`` area matrix repeats on its diagonal, or None when it does not."""
    from math import gcd

    g = gcd(n_in, n_out)
    if g < 2:
        return None
    m = area_matrix(n_in, n_out, np.dtype(dtype))
    block = np.ascontiguousarray(m[:n_out // g, :n_in // g])
    if not np.array_equal(np.kron(np.eye(g, dtype=m.dtype), block), m):
        return None
    block.setflags(write=False)
    return block


def _along_last_axis(rows, block, dense):
    """``rows @ dense.T`` for contiguous ``[M, n_in]`` rows, by ``block`` when the matrix repeats one."""
    if block is None:
        return np.dot(rows, dense.T)
    return np.dot(rows.reshape(-1, block.shape[1]), block.T).reshape(rows.shape[0], dense.shape[0])


def bilinear_resample(batch: np.ndarray, size) -> np.ndarray:
    """Bilinear resample ``[..., H, W]`` to ``size`` (int or (h, w)), half-pixel centres."""
    h, w = _target_shape(size)
    batch = np.asarray(batch)
    return apply_separable(
        batch, bilinear_matrix(batch.shape[-2], h), bilinear_matrix(batch.shape[-1], w)
    )


def square_pad_widths(h: int, w: int):
    """((top, bottom), (left, right)) zero padding that centres an h×w slice in a square."""
    s = max(h, w)
    return ((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2)


def pad_to_square(batch: np.ndarray) -> np.ndarray:
    """Zero-pad ``[..., H, W]`` to a centred square FOV (models see square slices)."""
    (t, b), (l, r) = square_pad_widths(batch.shape[-2], batch.shape[-1])
    if not (t or b or l or r):
        return batch
    return np.pad(batch, [(0, 0)] * (batch.ndim - 2) + [(t, b), (l, r)])


def crop_from_square(batch: np.ndarray, h: int, w: int) -> np.ndarray:
    """Undo :func:`pad_to_square` for an original ``h``×``w`` slice."""
    (t, _), (l, _) = square_pad_widths(h, w)
    return batch[..., t:t + h, l:l + w]


def canonical_transform(affine: np.ndarray):
    """Voxel-axis permutation and flips that bring a volume closest to axial LPS.

    Returns ``(world_of_axis, sign_of_axis)`` for the voxel axes (i, j, k): voxel
    axis ``a`` runs along LPS axis ``world_of_axis[a]`` with sign ``sign_of_axis[a]``.
    The pairing maximises the summed |cosine|, so oblique volumes get the nearest
    orthogonal orientation (permute and flip only; nothing is resampled).
    """
    import itertools

    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    cos = m / np.linalg.norm(m, axis=0, keepdims=True)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(cos[p[a], a]) for a in range(3)))
    signs = tuple(1 if cos[best[a], a] >= 0 else -1 for a in range(3))
    return tuple(best), signs


def to_canonical(array: np.ndarray, affine: np.ndarray):
    """Reorient a ``(k, j, i)`` array so that i runs L, j runs P and k runs S.

    Returns ``(array, affine)``; :func:`from_canonical` undoes it exactly.
    """
    world, signs = canonical_transform(affine)
    shape_ijk = array.shape[::-1]
    # new voxel axis w takes old voxel axis a where world[a] == w
    old_of_new = [world.index(w) for w in range(3)]
    arr = np.transpose(array, [2 - old_of_new[2 - n] for n in range(3)])
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    flips = []
    for w in range(3):
        a = old_of_new[w]
        if signs[a] > 0:
            index_map[a, w] = 1.0
        else:
            index_map[a, w] = -1.0
            index_map[a, 3] = shape_ijk[a] - 1
            flips.append(2 - w)
    if flips:
        arr = np.flip(arr, axis=flips)
    return np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64) @ index_map


def from_canonical(canonical_array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Bring an array made on the canonical grid back to the source grid of ``affine``."""
    world, signs = canonical_transform(affine)
    old_of_new = [world.index(w) for w in range(3)]
    flips = [2 - w for w in range(3) if signs[old_of_new[w]] < 0]
    arr = np.flip(canonical_array, axis=flips) if flips else canonical_array
    # inverse of the forward transpose
    fwd = [2 - old_of_new[2 - n] for n in range(3)]
    return np.ascontiguousarray(np.transpose(arr, np.argsort(fwd)))
