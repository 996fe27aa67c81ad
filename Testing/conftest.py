"""Shared fixtures: a tiny trained-and-exported model repository (real torch -> real ONNX)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_CACHE = {}


def pytest_configure(config):
    """The suite's caches (phantoms, calibrations, slices) go to a temporary folder, never ~/.cache (issue 30):
    ``$LOWRESSEG_CACHE`` is set for this process and every subprocess it starts, and removed at the end."""
    import tempfile

    _CACHE["old"] = os.environ.get("LOWRESSEG_CACHE")
    _CACHE["dir"] = os.environ["LOWRESSEG_CACHE"] = tempfile.mkdtemp(prefix="lowresseg-test-cache-")


def pytest_unconfigure(config):
    import shutil

    if "dir" in _CACHE:
        shutil.rmtree(_CACHE.pop("dir"), ignore_errors=True)
        if _CACHE.get("old") is None:
            os.environ.pop("LOWRESSEG_CACHE", None)
        else:
            os.environ["LOWRESSEG_CACHE"] = _CACHE["old"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 1-epoch training run on a tiny folder dataset (seconds, CPU)."""
    import numpy as np
    import SimpleITK as sitk

    from LowResSegLib.training.trainer import train

    root = tmp_path_factory.mktemp("tinydata")
    os.makedirs(str(root / "images"))
    os.makedirs(str(root / "labels"))
    rng = np.random.default_rng(0)
    for c in range(4):
        img = rng.normal(1.0, 0.05, (6, 64, 64)).astype(np.float32)
        lab = np.zeros(img.shape, np.uint8)
        yy, xx = np.mgrid[:64, :64]
        disc = (yy - 20 - 4 * c) ** 2 + (xx - 30) ** 2 < 64
        lab[2:5, disc] = 1
        img[lab > 0] += 1.5
        for sub, arr in (("images", img), ("labels", lab)):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / sub / ("case%d.nii.gz" % c)))
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = dict(backbone="elunet", head="jhead", input_size=16, output_size=64, width=2,
               data="folder:%s" % root, val_fraction=0.25, epochs=1, patience=5, batch_size=8, lr=1e-3,
               neg_ratio=0.5, seed=0, threads=0, device="cpu", out=str(out),
               cache_dir=str(tmp_path_factory.mktemp("cache")), command="lowresseg train (test)")
    train(cfg, progress=False)
    return str(out), cfg


@pytest.fixture(scope="session")
def tiny_repo(tiny_run, tmp_path_factory):
    from LowResSegLib.training.export import export_run

    repo = tmp_path_factory.mktemp("models")
    export_run(tiny_run[0], str(repo))
    return str(repo)
