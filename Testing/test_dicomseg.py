"""DICOM output: a synthetic MR series and a DICOM-SEG written on it, checked by dciodvfy.

No network model is used: the "tumour" is a threshold of a bright asymmetric blob, so
these tests check only the DICOM side (geometry, codes, references, validity, read-back).
dciodvfy (Debian dicom3tools) is required: the tests fail, not skip, without it.
"""

import os

import numpy as np
import pytest

from LowResSegLib.results.dicomseg import read_dicom_seg, run_dciodvfy, write_dicom_seg
from LowResSegLib.images.dicomsynth import write_mr_series
from LowResSegLib.images.geometry import Volume

NK, NJ, NI = 12, 56, 64
SPACING = (0.9, 0.8, 3.0)  # i, j, k: i != j so a swapped PixelSpacing shows

TUMOUR = {
    "index": 1, "name": "Tumour", "label": "whole tumour", "color": [230, 60, 40],
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
    "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
}
EDEMA = {
    "index": 2, "name": "Edema", "color": [40, 200, 60],
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
    "type": {"scheme": "SCT", "value": "79654002", "meaning": "Edema"},
}
CARD = {"name": "lowresseg-test", "version": "1.2.3", "classes": [TUMOUR]}


def _dciodvfy(path):
    try:
        return run_dciodvfy(path, full_output=True)
    except FileNotFoundError as exc:
        pytest.fail("dciodvfy is missing (%s); run scripts/setup.sh, which installs dicom3tools" % exc)


def _affine():
    # Oblique-free but not identity: i runs anterior (-y), j inferior (-z), k left (+x).
    a = np.eye(4)
    a[:3, 0] = [0.0, -SPACING[0], 0.0]
    a[:3, 1] = [0.0, 0.0, -SPACING[1]]
    a[:3, 2] = [SPACING[2], 0.0, 0.0]
    a[:3, 3] = [-20.0, 30.5, 41.0]
    return a


def _volume():
    k, j, i = np.mgrid[:NK, :NJ, :NI].astype(np.float64)
    # Off-centre and elongated along i, so a flip or transpose of any axis shows.
    blob = np.exp(-(((i - 41) / 7.0) ** 2 + ((j - 19) / 4.0) ** 2 + ((k - 5.3) / 1.6) ** 2))
    img = 120.0 + 30.0 * np.sin(i / 6.0) + 10.0 * (j / NJ) + 900.0 * blob
    return Volume(img.astype(np.float32), _affine(), {"modality": "MR"}), (blob > 0.3).astype(np.uint8)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicomseg")
    vol, labels = _volume()
    files = write_mr_series(vol, str(root / "mr"), series_description="phantom T1", seed=7)
    return {"root": root, "vol": vol, "labels": labels, "files": files}


@pytest.fixture(scope="module")
def seg_path(series):
    out = str(series["root"] / "seg.dcm")
    assert write_dicom_seg(series["labels"], series["files"], CARD, out) == out
    return out


def test_labels_have_empty_and_tumour_slices(series):
    per_slice = series["labels"].reshape(NK, -1).any(axis=1)
    assert per_slice.any() and not per_slice.all()
    assert per_slice.sum() <= NK - 4


def test_synthetic_series_geometry_and_pixels(series):
    import pydicom

    files, vol = series["files"], series["vol"]
    assert len(files) == NK and all(os.path.dirname(f) == str(series["root"] / "mr") for f in files)
    a = vol.affine
    datasets = [pydicom.dcmread(f) for f in files]
    assert len(set(ds.SeriesInstanceUID for ds in datasets)) == 1
    assert len(set(ds.FrameOfReferenceUID for ds in datasets)) == 1
    for k, ds in enumerate(datasets):
        assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert int(ds.InstanceNumber) == k + 1
        assert (ds.Rows, ds.Columns) == (NJ, NI)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], a.dot([0, 0, k, 1])[:3], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [0, -1, 0, 0, 0, -1], atol=1e-9)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [SPACING[1], SPACING[0]])
        assert float(ds.SliceThickness) == pytest.approx(SPACING[2])
        # Plain scaling through the origin: stored values are proportional to the volume.
        px = ds.pixel_array.astype(np.float64)
        scale = 4095.0 / float(vol.array.max())
        np.testing.assert_allclose(px, vol.array[k].astype(np.float64) * scale, atol=0.501)
        assert px.max() <= 4095


def test_source_series_passes_dciodvfy(series):
    errors, warnings, output = _dciodvfy(series["files"][0])
    assert "MRImage" in output, output
    assert errors == [], output


def test_seg_passes_dciodvfy(seg_path):
    errors, warnings, output = _dciodvfy(seg_path)
    assert output.splitlines() and output.splitlines()[0].strip() == "Segmentation", output
    assert errors == [], output


def test_seg_reads_back_voxel_for_voxel(series, seg_path):
    import pydicom

    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    n_tumour_slices = int(series["labels"].reshape(NK, -1).any(axis=1).sum())
    assert int(ds.NumberOfFrames) == n_tumour_slices  # empty frames were left out
    back = read_dicom_seg(seg_path, series["files"])
    assert back.dtype == np.uint8 and back.shape == (NK, NJ, NI)
    np.testing.assert_array_equal(back, series["labels"])


def test_plane_position_fallback_matches(series, seg_path):
    import highdicom as hd
    import pydicom

    from LowResSegLib.results.dicomseg import _masks_by_position

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series["files"]]
    masks = _masks_by_position(hd.seg.segread(seg_path), sources, [1])
    np.testing.assert_array_equal(masks[..., 0], series["labels"])


def test_seg_attributes(series, seg_path):
    import pydicom

    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    src = pydicom.dcmread(series["files"][0], stop_before_pixels=True)
    assert seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    refs = seg.ReferencedSeriesSequence
    assert len(refs) == 1 and refs[0].SeriesInstanceUID == src.SeriesInstanceUID
    all_uids = set(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series["files"])
    assert set(r.ReferencedSOPInstanceUID for r in refs[0].ReferencedInstanceSequence) == all_uids
    assert len(seg.SegmentSequence) == 1
    s = seg.SegmentSequence[0]
    assert int(s.SegmentNumber) == 1 and s.SegmentLabel == "Tumour"
    cat, typ = s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]
    assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (typ.CodeValue, typ.CodingSchemeDesignator) == ("108369006", "SCT")
    assert s.SegmentAlgorithmType == "AUTOMATIC"
    algo = s.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "lowresseg-test" and algo.AlgorithmVersion == "1.2.3"
    fam = algo.AlgorithmFamilyCodeSequence[0]
    assert (fam.CodeValue, fam.CodingSchemeDesignator) == ("123110", "DCM")
    assert len(s.RecommendedDisplayCIELabValue) == 3
    assert "SRT" not in str(seg)


def test_all_empty_labels_give_valid_empty_seg(series, caplog):
    import logging

    out = str(series["root"] / "empty.dcm")
    empty = np.zeros((NK, NJ, NI), np.uint8)
    with caplog.at_level(logging.DEBUG):
        write_dicom_seg(empty, series["files"], CARD, out)
    # highdicom's "Reverting to encoding all frames ..." is for a Python caller, not a radiologist
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    errors, _, output = _dciodvfy(out)
    assert errors == [], output
    np.testing.assert_array_equal(read_dicom_seg(out, series["files"]), empty)


def test_class_index_survives_missing_lower_class(series):
    card = dict(CARD, classes=[TUMOUR, EDEMA])
    labels = series["labels"] * 2  # only class 2 present: it becomes segment 1
    out = str(series["root"] / "edema.dcm")
    write_dicom_seg(labels, series["files"], card, out)
    np.testing.assert_array_equal(read_dicom_seg(out, series["files"]), labels)
    np.testing.assert_array_equal(read_dicom_seg(out, series["files"], card=card), labels)
    errors, _, output = _dciodvfy(out)
    assert errors == [], output


def test_wrong_labels_shape_is_refused(series):
    out = str(series["root"] / "bad_shape.dcm")
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(series["labels"][:, :, :-1], series["files"], CARD, out)
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(series["labels"][1:], series["files"], CARD, out)
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(np.transpose(series["labels"], (0, 2, 1)), series["files"], CARD, out)
    assert not os.path.exists(out)


def test_unknown_label_value_is_refused(series):
    labels = series["labels"] * 7
    with pytest.raises(ValueError, match="class indices"):
        write_dicom_seg(labels, series["files"], CARD, str(series["root"] / "bad_value.dcm"))


def test_existing_output_needs_overwrite(series):
    out = str(series["root"] / "exists.dcm")
    with open(out, "wb") as f:
        f.write(b"keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dicom_seg(series["labels"], series["files"], CARD, out)
    with open(out, "rb") as f:
        assert f.read() == b"keep me"
    write_dicom_seg(series["labels"], series["files"], CARD, out, overwrite=True)
    np.testing.assert_array_equal(read_dicom_seg(out, series["files"]), series["labels"])
    leftovers = [n for n in os.listdir(str(series["root"])) if n.endswith(".tmp")]
    assert leftovers == []


def test_mixed_series_is_refused(series):
    vol, _ = _volume()
    other = write_mr_series(vol, str(series["root"] / "other"), seed=8, file_prefix="OT")
    mixed = list(series["files"][:-1]) + [other[-1]]
    with pytest.raises(ValueError, match="share one"):
        write_dicom_seg(series["labels"], mixed, CARD, str(series["root"] / "mixed.dcm"))
    with pytest.raises(ValueError, match="share one"):
        read_dicom_seg(str(series["root"] / "seg.dcm"), mixed)


def test_legacy_srt_scheme_is_written_as_sct(series):
    import pydicom

    legacy = dict(TUMOUR, type={"scheme": "SRT", "value": "108369006", "meaning": "Neoplasm"})
    out = str(series["root"] / "srt.dcm")
    write_dicom_seg(series["labels"], series["files"], dict(CARD, classes=[legacy]), out)
    s = pydicom.dcmread(out, stop_before_pixels=True).SegmentSequence[0]
    assert s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    bad = dict(TUMOUR, type={"scheme": "SRT", "value": "M-80003", "meaning": "Neoplasm"})
    with pytest.raises(ValueError, match="SCT"):
        write_dicom_seg(series["labels"], series["files"], dict(CARD, classes=[bad]), str(series["root"] / "x.dcm"))


def test_missing_dciodvfy_is_a_clear_error(monkeypatch, seg_path):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="dicom3tools"):
        run_dciodvfy(seg_path)


# --------------------------------------------------------------------------- real-world sources


def _rewrite(files, **changes):
    import pydicom

    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in changes.items():
            value = value(ds) if callable(value) else value
            setattr(ds, key, value)
        ds.save_as(f)


def test_invalid_patient_sex_is_left_empty_and_said(series, tmp_path):
    """Anonymised data often says PatientSex '0000': the SEG leaves it empty instead of failing."""
    import shutil

    import pydicom

    from LowResSegLib.results.dicomseg import check_seg_sources

    files = [shutil.copy(f, str(tmp_path / os.path.basename(f))) for f in series["files"]]
    _rewrite(files, PatientSex="0000")
    sources = check_seg_sources(files)
    assert sources.notes == ["PatientSex '0000' of the source is not valid DICOM; left empty in the SEG"]
    out = str(tmp_path / "seg.dcm")
    write_dicom_seg(series["labels"], files, CARD, out, sources=sources)
    assert pydicom.dcmread(out).PatientSex == ""
    errors, _, text = _dciodvfy(out)
    assert errors == [], text
    np.testing.assert_array_equal(read_dicom_seg(out, files), series["labels"])


def test_orientation_jitter_within_tolerance_is_one_orientation(series, tmp_path):
    """A GE 3-D series' cosines differ by ~6e-8: highdicom alone refuses ('shared orientation')."""
    import shutil

    from LowResSegLib.results.dicomseg import check_seg_sources

    files = [shutil.copy(f, str(tmp_path / os.path.basename(f))) for f in series["files"]]
    for n, f in enumerate(files[1::2]):
        _rewrite([f], ImageOrientationPatient=lambda ds: [float(v) + 6e-8 for v in ds.ImageOrientationPatient])
    sources = check_seg_sources(files)
    assert len(sources.notes) == 1 and "orientations differing by up to 6e-08 were taken as one" in sources.notes[0]
    out = str(tmp_path / "seg.dcm")
    write_dicom_seg(series["labels"], files, CARD, out, sources=sources)
    errors, _, text = _dciodvfy(out)
    assert errors == [], text
    np.testing.assert_array_equal(read_dicom_seg(out, files), series["labels"])
    _rewrite(files[:1], ImageOrientationPatient=[0.0, -0.9, 0.43589, 0.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="differ in orientation by up to .* a SEG needs one orientation"):
        check_seg_sources(files)


def test_seg_on_an_enhanced_multiframe_source_references_its_frames(tmp_path):
    """The real Canon enhanced file (Testing/data/dicom): volume 1 = frames 41..80."""
    import pydicom

    from LowResSegLib.images.io import read_volume

    vol = read_volume(os.path.join(os.path.dirname(__file__), "data", "dicom", "canon_enhanced_dti"), channel=1)
    labels = np.zeros(vol.shape, np.uint8)
    labels[10:20, 4:9, 5:12] = 1
    out = str(tmp_path / "seg.dcm")
    write_dicom_seg(labels, vol.meta["files"], CARD, out, source_frames=vol.meta["frames"])
    ds = pydicom.dcmread(out)
    referenced = sorted(int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                        for f in ds.PerFrameFunctionalGroupsSequence)
    assert referenced == list(range(51, 61))  # slices 10..19 of volume 1 = frames 41 + 10 ..
    errors, _, text = _dciodvfy(out)
    assert errors == [], text
    back = read_dicom_seg(out, vol.meta["files"], source_frames=vol.meta["frames"])
    np.testing.assert_array_equal(back, labels)


def test_dciodvfy_errors_of_a_source_are_listed_as_inherited_not_ours(series, tmp_path):
    """A source with a 70-character PatientID (LO allows 64): the SEG copies it, and says whose error it is."""
    import shutil
    import warnings

    from LowResSegLib.results.dicomseg import seg_errors_by_origin

    files = [shutil.copy(f, str(tmp_path / os.path.basename(f))) for f in series["files"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the over-long value we write on purpose
        _rewrite(files, PatientID="X" * 70)
    out = str(tmp_path / "seg.dcm")
    write_dicom_seg(series["labels"], files, CARD, out)
    ours, inherited = seg_errors_by_origin(out, files[0])
    assert ours == [] and any("Patient ID" in e and "Length invalid" in e for e in inherited)
    errors, _ = run_dciodvfy(out)
    assert sorted(errors) == sorted(ours + inherited) and errors  # the split neither hides nor invents errors


def test_labels_for_source_files_follow_the_files_and_refuse_a_resampled_volume(series):
    from LowResSegLib.results.dicomseg import labels_for_source_files

    vol, labels = series["vol"], series["labels"]
    files = list(reversed(series["files"]))  # a viewer's own order
    np.testing.assert_array_equal(labels_for_source_files(labels, vol.affine, files), labels[::-1])
    shifted = vol.affine.copy()
    shifted[:3, 3] += 0.5 * vol.affine[:3, 2]  # half a slice off: resampled, not the source grid
    with pytest.raises(ValueError, match="does not lie on a slice of the volume"):
        labels_for_source_files(labels, shifted, files)
    # slices of another size than the files' (a volume resampled in plane): one clear message, not a TypeError
    smaller = labels[:, ::2, ::2]
    with pytest.raises(ValueError, match=r"has \d+x\d+ pixels but the volume's slices are %dx%d" % smaller.shape[1:]):
        labels_for_source_files(smaller, vol.affine, files)
