"""One volume in, a tumour mask on the source grid out.

canonical axial orientation -> normalisation -> per slice: square FOV, area-resample
to r -> engine -> probabilities at R -> bilinear back to the square slice -> crop ->
threshold -> undo orientation.
"""

import numpy as np

from LowResSegLib.geometry import (area_resample, bilinear_resample, crop_from_square, from_canonical,
                                   pad_to_square, to_canonical)
from LowResSegLib.intensity import normalize_volume


def segment_array(image, affine, engine, chunk=32, progress=None):
    """Labels (uint8, source grid, (k,j,i)) and the tumour probability (float32, same grid).

    ``progress(done, total)`` is called after every chunk of slices.
    """
    card = engine.card
    if image.ndim != 3:
        raise ValueError("expected a 3-D volume, got %d-D with shape %s" % (image.ndim, image.shape))
    canon, _ = to_canonical(np.asarray(image), affine)
    norm = normalize_volume(canon, card["normalization"]["method"])
    nk, h, w = norm.shape
    r = card["input_size"]
    prob = np.zeros((nk, h, w), np.float32)
    for start in range(0, nk, chunk):
        sl = pad_to_square(norm[start:start + chunk])
        x = area_resample(sl, r)[:, None].astype(np.float32)
        _, p = engine.infer(x)
        p = bilinear_resample(p[:, 0], sl.shape[-1])
        prob[start:start + chunk] = crop_from_square(p, h, w)
        if progress is not None:
            progress(min(nk, start + chunk), nk)
    prob = from_canonical(prob, affine)
    return (prob > 0.5).astype(np.uint8), prob
