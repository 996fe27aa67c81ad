"""DICOM as scanners write it: several volumes per position, duplicates, missing geometry,
mixed orientations, MOSAIC, tiny header jitter (LowResSegLib.images.dicomread through read_volume).

Synthetic series (pydicom, from our own test phantom) show each rule; the real public series
in Testing/data/dicom show the ones synthetic data cannot (test_dicom_corpus.py).
"""

import os

import numpy as np
import pytest

from LowResSegLib.images.io import VolumeReadError, read_volume
from test_io import ROW, COL, THICKNESS, listing, phantom, write_dicom_series

pydicom = pytest.importorskip("pydicom")


def _set(**values):
    def tweak(ds, s):
        for key, value in values.items():
            setattr(ds, key, value)
    return tweak


def _diffusion_series(folder, b_values):
    """One series, every position once per b-value (a classic-DICOM DTI export)."""
    from pydicom.uid import generate_uid

    series = generate_uid()
    for n, b in enumerate(b_values):
        def tweak(ds, s, n=n, b=b):
            ds.DiffusionBValue = b
            ds.AcquisitionNumber = n + 1
            ds.SeriesDescription = "DTI 3 dir"
        write_dicom_series(folder, phantom() + 100 * n, seed=n, series_uid=series, tweak=tweak, prefix="V%d_" % n)
    return series


def test_repeated_positions_are_volumes_refused_with_a_list_then_picked(tmp_path):
    folder = tmp_path / "dti"
    _diffusion_series(folder, [0, 1000, 1000])
    before = listing(folder)
    with pytest.raises(VolumeReadError) as err:
        read_volume(folder)
    msg = str(err.value)
    assert "3 volumes at the same slice positions" in msg and "volume 0: b = 0" in msg and "volume 2: b = 1000" in msg
    assert "--channel N with N in 0..2" in msg
    vol = read_volume(folder, channel=1)
    assert vol.shape == phantom().shape
    np.testing.assert_allclose(vol.spacing[2], THICKNESS, atol=1e-4)  # not THICKNESS / 3
    assert {pydicom.dcmread(f, stop_before_pixels=True).AcquisitionNumber for f in vol.meta["files"]} == {2}
    assert sorted(np.unique(vol.array))[-1] == 600  # the cube of acquisition 2 (b = 1000), not a mix
    assert listing(folder) == before


def test_one_duplicated_slice_is_refused(tmp_path):
    from pydicom.uid import generate_uid

    folder = tmp_path / "dup"
    write_dicom_series(folder, phantom())
    ds = pydicom.dcmread(str(folder / "IM0002.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(str(folder / "IM0002_copy.dcm"))
    with pytest.raises(VolumeReadError, match="2 images at one slice position .* duplicate slices .*IM0002"):
        read_volume(folder)


def test_missing_geometry_is_refused_not_guessed(tmp_path):
    folder = tmp_path / "nogeo"

    def strip(ds, s):
        del ds.ImagePositionPatient
        del ds.PixelSpacing

    write_dicom_series(folder, phantom(), tweak=strip)
    with pytest.raises(VolumeReadError, match="lacks ImagePositionPatient and PixelSpacing.*no volume in mL"):
        read_volume(folder)


def test_mixed_orientations_are_refused_tiny_jitter_is_not(tmp_path):
    tilted = tmp_path / "tilted"

    def tilt(ds, s):
        if s == 2:  # one slice 5 degrees off: a localizer-like intruder
            a = np.deg2rad(5)
            row = np.cos(a) * ROW + np.sin(a) * np.cross(ROW, COL)
            ds.ImageOrientationPatient = [float(v) for v in np.concatenate([row, COL])]

    write_dicom_series(tilted, phantom(), tweak=tilt)
    with pytest.raises(VolumeReadError, match="mixes slice orientations"):
        read_volume(tilted)

    jitter = tmp_path / "jitter"  # what a GE 3-D T1 writes: cosines that differ by ~6e-8

    def wobble(ds, s):
        ds.ImageOrientationPatient = [float(v) + (6e-8 if s % 2 else 0.0) for v in np.concatenate([ROW, COL])]

    write_dicom_series(jitter, phantom(), tweak=wobble)
    vol = read_volume(jitter)
    assert vol.shape == phantom().shape and vol.meta["warnings"] == []


def _uneven_series(folder, shift_mm):
    """Slice 3 moved along the normal by ``shift_mm`` (slices are 3 mm apart)."""
    normal = np.cross(ROW, COL)

    def shift(ds, s):
        if s == 3:
            ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient) + shift_mm * normal]

    write_dicom_series(folder, phantom(), tweak=shift)
    return folder


def test_slightly_uneven_spacing_is_warned_and_a_gap_refused(tmp_path):
    vol = read_volume(_uneven_series(tmp_path / "uneven", 0.1))
    (warning,) = vol.meta["warnings"]
    assert "slice steps" in warning and "vary from 2.9 to 3.1 mm" in warning
    with pytest.raises(VolumeReadError, match=r"uneven slice positions \(steps from 2 to 4 mm"):
        read_volume(_uneven_series(tmp_path / "gap", 1.0))


def test_mosaic_is_refused(tmp_path):
    folder = tmp_path / "mosaic"
    write_dicom_series(folder, phantom(), tweak=_set(ImageType=["ORIGINAL", "PRIMARY", "M", "MOSAIC"]))
    with pytest.raises(VolumeReadError, match="Siemens MOSAIC .* dcm2niix"):
        read_volume(folder)


@pytest.mark.parametrize("text,ti,expected", [
    ("Ax T2 FLAIR", None, "FLAIR"), ("t2_tirm_tra_dark-fluid", None, "FLAIR"), ("sag 3D", 2500.0, "FLAIR"),
    ("MPRAGE", 900.0, "T1"), ("T1 IR", 2500.0, "T1"), ("AX T2 FSE", None, "T2"), ("ep2d_diff", None, "DWI"),
    ("Product EPI Sag Ascending", None, "EPI"), ("localizer", None, None),
])
def test_contrast_guess_from_headers(text, ti, expected):
    from LowResSegLib.images.dicomread import Series, guess_contrast

    header = {"SeriesDescription": text, "ScanningSequence": "IR" if ti else "SE"}
    if ti:
        header["InversionTime"] = ti
    assert guess_contrast(Series("1.2.3", header)) == expected


def test_itk_warnings_stay_off_the_terminal(tmp_path, capfd):
    """Uneven slices make GDCM print 'WARNING: In /tmp/SimpleITK-build/...' from C++; we say it our way."""
    folder = _uneven_series(tmp_path / "uneven", 0.1)
    capfd.readouterr()
    vol = read_volume(folder)
    captured = capfd.readouterr()
    assert "WARNING" not in captured.err and "SimpleITK" not in captured.err, captured.err
    assert len(vol.meta["warnings"]) == 1


def test_compressed_copy_reads_the_same(tmp_path):
    """An RLE Lossless copy of a series (PACS often stores compressed) gives the same volume."""
    from pydicom.uid import RLELossless

    plain, packed = tmp_path / "plain", tmp_path / "rle"
    write_dicom_series(plain, phantom())
    packed.mkdir()
    for name in os.listdir(str(plain)):
        ds = pydicom.dcmread(str(plain / name))
        ds.compress(RLELossless)
        ds.save_as(str(packed / name))
    a, b = read_volume(plain), read_volume(packed)
    assert pydicom.dcmread(b.meta["files"][0]).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
