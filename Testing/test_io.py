"""Tests for LowResSegLib.images.io: reading volumes, writing labels and .seg.nrrd.

Every reader is checked with an asymmetric phantom (an off-centre bright cube in a
non-cubic (k, j, i) volume) written with a non-trivial orientation: the cube's world
(LPS) centroid computed from the reader's affine must equal the one computed from how
the file was written, so any flipped or swapped axis or a RAS/LPS mix-up fails.
Bad input must raise the documented exception with a clear message and write nothing.
"""

import os
import random
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.images import io as lio
from LowResSegLib.images.geometry import Volume
from LowResSegLib.images.io import VolumeReadError, read_volume, write_labels, write_seg_nrrd
from helpers import rotation

SHAPE = (6, 9, 13)  # (k, j, i): every axis a different length
CUBE = (slice(1, 3), slice(2, 5), slice(8, 12))  # off-centre in every axis
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TUMOUR = {
    "index": 1,
    "name": "Tumour",
    "color": [230, 60, 40],
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
    "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
}


def phantom():
    """int16 (k, j, i) volume: a gradient background (never 0) and a bright cube."""
    k, j, i = np.indices(SHAPE)
    vol = (10 + i + 2 * j + 3 * k).astype(np.int16)
    vol[CUBE] = 500
    return vol


def cube_centroid_ijk(array_kji):
    return np.argwhere(array_kji >= 500).mean(axis=0)[::-1]


def world(affine, ijk):
    return (np.asarray(affine) @ np.append(ijk, 1.0))[:3]


def listing(folder):
    return sorted(os.listdir(str(folder)))


# --------------------------------------------------------------------------- NIfTI / NRRD / MHA


def write_nifti(path, data_kji, ras_affine):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(np.asarray(data_kji).transpose(2, 1, 0), ras_affine)  # nibabel is (i, j, k)
    img.set_sform(ras_affine, code=1)
    img.set_qform(ras_affine, code=1)
    nib.save(img, str(path))


def ras_affine():
    # voxel i runs along -A (rotated 20 deg about S), j along +R, k along -S: flips and a swap
    perm = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    m = np.eye(4)
    m[:3, :3] = rotation(2, 20.0) @ perm @ np.diag([0.9, 1.1, 3.0])
    m[:3, 3] = [12.0, -7.5, 40.0]
    return m


def sitk_geometry():
    direction = rotation(0, 30.0) @ np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return (0.9, 1.1, 3.0), direction, (-20.0, 35.5, 7.25)


def write_sitk(path, data_kji, geometry=None):
    img = sitk.GetImageFromArray(np.asarray(data_kji))
    spacing, direction, origin = geometry or sitk_geometry()
    img.SetSpacing(spacing)
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), True)


def test_nifti_ras_affine_becomes_lps(tmp_path):
    path = tmp_path / "phantom.nii.gz"
    write_nifti(path, phantom(), ras_affine())
    vol = read_volume(path)

    assert vol.array.dtype == np.float32 and vol.array.shape == SHAPE
    np.testing.assert_array_equal(vol.array, phantom())
    np.testing.assert_allclose(vol.affine, LPS_FROM_RAS @ ras_affine(), atol=1e-4)
    truth = (LPS_FROM_RAS @ ras_affine() @ np.append(cube_centroid_ijk(phantom()), 1.0))[:3]
    np.testing.assert_allclose(world(vol.affine, cube_centroid_ijk(vol.array)), truth, atol=1e-3)
    np.testing.assert_allclose(vol.spacing, (0.9, 1.1, 3.0), atol=1e-5)
    assert vol.meta == {"source": str(path), "format": "nifti", "modality": None, "warnings": []}


@pytest.mark.parametrize("ext, fmt", [(".nrrd", "nrrd"), (".mha", "mha")])
def test_nrrd_and_mha_geometry(tmp_path, ext, fmt):
    path = tmp_path / ("phantom" + ext)
    write_sitk(path, phantom())
    vol = read_volume(str(path))

    spacing, direction, origin = sitk_geometry()
    np.testing.assert_array_equal(vol.array, phantom())
    truth = np.asarray(origin) + direction @ (np.asarray(spacing) * cube_centroid_ijk(phantom()))
    np.testing.assert_allclose(world(vol.affine, cube_centroid_ijk(vol.array)), truth, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, spacing, atol=1e-9)
    assert vol.meta["format"] == fmt and vol.meta["modality"] is None and vol.meta["warnings"] == []


# --------------------------------------------------------------------------- DICOM


ROW, COL = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0]), np.array([0.0, 0.0, -1.0])  # oblique coronal
PIXEL_SPACING = (0.8, 0.6)  # DICOM order: between rows (j), between columns (i)
THICKNESS = 3.0
IPP0 = np.array([-40.0, 12.5, 60.0])


def write_dicom_series(folder, data_kji, modality="MR", intercept=0.0, seed=0, series_uid=None, tweak=None,
                       prefix="IM"):
    """One file per slice, shuffled file names; returns {sop_uid: (slice index, position)} and the UIDs.

    ``tweak(ds, s)`` may change slice ``s``'s dataset before it is saved (a description, a
    broken position, ...).
    """
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    os.makedirs(str(folder), exist_ok=True)
    uids = {"study": generate_uid(), "series": series_uid or generate_uid(), "frame": generate_uid()}
    normal = np.cross(ROW, COL)
    names = list(range(len(data_kji)))
    random.Random(seed).shuffle(names)
    slices = {}
    for s in range(len(data_kji)):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["series"], uids["frame"]
        ds.PatientID, ds.PatientName = "PHANTOM-1", "Phantom^Cube"
        ds.InstanceNumber = len(data_kji) - s  # deliberately opposite to the position order
        position = IPP0 + s * THICKNESS * normal
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([ROW, COL])]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = THICKNESS
        ds.Rows, ds.Columns = data_kji.shape[1], data_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if intercept:
            ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
        ds.PixelData = (data_kji[s] - intercept).astype("<i2").tobytes()
        if tweak is not None:
            tweak(ds, s)
        ds.save_as(os.path.join(str(folder), "%s%04d.dcm" % (prefix, names[s])), enforce_file_format=True)
        slices[sop] = (s, position)
    return slices, uids


def check_dicom_volume(vol, folder, slices, uids, data_kji):
    assert vol.meta["format"] == "dicom"
    assert vol.meta["series_instance_uid"] == uids["series"]
    assert vol.meta["study_instance_uid"] == uids["study"]
    assert vol.meta["frame_of_reference_uid"] == uids["frame"]
    assert vol.meta["patient_id"] == "PHANTOM-1"
    sops = vol.meta["sop_instance_uids"]
    assert sorted(sops) == sorted(slices) and len(vol.meta["files"]) == len(sops)
    for k, sop in enumerate(sops):  # k order: slice k of the array is the file with that SOP UID ...
        s, position = slices[sop]
        np.testing.assert_array_equal(vol.array[k], data_kji[s])
        np.testing.assert_allclose(world(vol.affine, (0, 0, k)), position, atol=1e-4)  # ... at its position
        pydicom = pytest.importorskip("pydicom")
        assert pydicom.dcmread(vol.meta["files"][k], stop_before_pixels=True).SOPInstanceUID == sop
    np.testing.assert_allclose(vol.spacing, (PIXEL_SPACING[1], PIXEL_SPACING[0], THICKNESS), atol=1e-4)
    # the cube's world centroid, straight from the DICOM definition of pixel positions
    cs, cj, ci = np.argwhere(data_kji >= 500).mean(axis=0)
    truth = (IPP0 + ci * PIXEL_SPACING[1] * ROW + cj * PIXEL_SPACING[0] * COL
             + cs * THICKNESS * np.cross(ROW, COL))
    np.testing.assert_allclose(world(vol.affine, cube_centroid_ijk(vol.array)), truth, atol=1e-4)


def test_dicom_series_sorted_by_position(tmp_path):
    folder = tmp_path / "mr"
    slices, uids = write_dicom_series(folder, phantom())
    vol = read_volume(folder)
    check_dicom_volume(vol, folder, slices, uids, phantom())
    assert vol.meta["modality"] == "MR" and vol.meta["warnings"] == []


def test_dicom_ct_rescaled_and_warned(tmp_path):
    folder = tmp_path / "ct"
    slices, uids = write_dicom_series(folder, phantom(), modality="CT", intercept=-1024.0)
    vol = read_volume(folder)
    check_dicom_volume(vol, folder, slices, uids, phantom())  # rescale intercept applied
    assert vol.meta["modality"] == "CT"
    assert len(vol.meta["warnings"]) == 1 and "modality is CT, not MR" in vol.meta["warnings"][0]


def _describe(text):
    def tweak(ds, s):
        ds.SeriesDescription = text
    return tweak


def test_dicom_two_series_refused_unless_one_matches_or_is_chosen(tmp_path):
    """Two series of one size: no tie broken by UID order; the FLAIR wins for a FLAIR model."""
    folder = tmp_path / "two"
    slices, uids = write_dicom_series(folder, phantom(), tweak=_describe("Ax T2 FLAIR"))
    t2_slices, t2_uids = write_dicom_series(folder, phantom(), seed=1, tweak=_describe("Ax T2 TSE"), prefix="T2_")
    with pytest.raises(VolumeReadError, match="2 image series and no modality to prefer") as err:
        read_volume(folder)
    assert uids["series"] in str(err.value) and t2_uids["series"] in str(err.value) and "--series UID" in str(err.value)
    vol = read_volume(folder, contrast="FLAIR")
    check_dicom_volume(vol, folder, slices, uids, phantom())
    (warning,) = vol.meta["warnings"]
    assert "2 image series" in warning and "looks like FLAIR" in warning and vol.meta["contrast"] == "FLAIR"
    picked = read_volume(folder, series=t2_uids["series"], contrast="FLAIR")
    check_dicom_volume(picked, folder, t2_slices, t2_uids, phantom())
    assert picked.meta["contrast"] == "T2"
    with pytest.raises(VolumeReadError, match="series 1.2.3 is not in"):
        read_volume(folder, series="1.2.3")
    with pytest.raises(VolumeReadError, match="none looks like T1"):
        read_volume(folder, contrast="T1")


def test_dicom_non_image_file_is_ignored_with_warning(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "mr"
    slices, uids = write_dicom_series(folder, phantom())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixels
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID, sr.SOPInstanceUID, sr.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "SR"
    sr.save_as(str(folder / "report.dcm"), enforce_file_format=True)
    (folder / "notes.txt").write_text("scanned on Tuesday")

    vol = read_volume(folder)
    check_dicom_volume(vol, folder, slices, uids, phantom())
    (warning,) = vol.meta["warnings"]
    assert "report.dcm" in warning and "notes.txt" in warning and "not part of a DICOM image series" in warning


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_dicom_folder_with_one_corrupt_slice_is_refused(tmp_path, damage):
    folder = tmp_path / "mr"
    write_dicom_series(folder, phantom())
    bad = folder / "IM0003.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) - 40] if damage == "truncated" else os.urandom(len(data)))
    before = listing(folder)
    with pytest.raises(VolumeReadError, match="could not be read") as err:
        read_volume(folder)
    assert str(bad) in str(err.value) and "drop a slice" in str(err.value)
    assert "force=True" not in str(err.value)  # pydicom's advice to Python callers, not to a CLI user
    assert "\n" not in str(err.value)
    assert listing(folder) == before


def test_dicom_missing_slice_is_refused(tmp_path):
    folder = tmp_path / "gap"
    write_dicom_series(folder, phantom())
    pydicom = pytest.importorskip("pydicom")
    for name in os.listdir(str(folder)):
        if pydicom.dcmread(str(folder / name), stop_before_pixels=True).InstanceNumber == 3:
            os.remove(str(folder / name))  # never exported: nothing in the folder can tell, except the positions
    with pytest.raises(VolumeReadError, match="uneven slice positions .* a slice is missing"):
        read_volume(folder)


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    (folder / "sub").mkdir()
    with pytest.raises(VolumeReadError, match="no DICOM image series found") as err:
        read_volume(folder)
    assert "1 files, 1 sub-folders" in str(err.value)
    assert listing(folder) == ["notes.txt", "sub"]


def test_single_dicom_file_points_to_folder(tmp_path):
    write_dicom_series(tmp_path / "mr", phantom())
    with pytest.raises(VolumeReadError, match="single DICOM file; pass the folder"):
        read_volume(tmp_path / "mr" / "IM0000.dcm")


# --------------------------------------------------------------------------- bad files


def test_missing_path(tmp_path):
    with pytest.raises(VolumeReadError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    assert listing(tmp_path) == []


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(VolumeReadError, match="not a supported volume format"):
        read_volume(path)


@pytest.mark.parametrize("name, damage", [
    ("t.nii.gz", "truncate"), ("r.nii.gz", "random"), ("r.nii", "random"), ("t.nii", "truncate")])
def test_corrupt_nifti(tmp_path, name, damage):
    good = tmp_path / ("good" + name[1:])
    write_nifti(good, phantom().astype(np.float32), ras_affine())
    data = good.read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    before = listing(tmp_path)
    with pytest.raises(VolumeReadError, match=r"is not a readable NIfTI file \(truncated or corrupt\)") as err:
        read_volume(path)
    assert str(path) in str(err.value) and "re-export" in str(err.value) and "\n" not in str(err.value)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("ext, fmt", [(".nrrd", "NRRD"), (".mha", "MetaImage")])
def test_truncated_nrrd_and_mha(tmp_path, ext, fmt):
    path = tmp_path / ("x" + ext)
    write_sitk(path, phantom())
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(VolumeReadError, match="is not a readable %s file" % fmt):
        read_volume(path)


def test_2d_image_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((9, 13), np.float32)), str(path))
    with pytest.raises(VolumeReadError, match=r"is 2-D .*LowResSeg needs a 3-D volume"):
        read_volume(path)


def four_d():
    return np.stack([phantom() + 1000 * c for c in range(3)]).astype(np.float32)  # (c, k, j, i)


def test_4d_nifti_needs_a_channel(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(four_d().transpose(3, 2, 1, 0), ras_affine()), str(path))
    with pytest.raises(VolumeReadError, match=r"has 3 channels .*pass --channel N with N in 0\.\.2"):
        read_volume(path)
    with pytest.raises(VolumeReadError, match=r"channel 3 is out of range: .* has 3 channels"):
        read_volume(path, channel=3)
    with pytest.raises(VolumeReadError, match="out of range"):
        read_volume(path, channel=-1)
    vol = read_volume(path, channel=1)
    np.testing.assert_array_equal(vol.array, four_d()[1])
    np.testing.assert_allclose(vol.affine, LPS_FROM_RAS @ ras_affine(), atol=1e-4)


def test_vector_pixel_nrrd_needs_a_channel(tmp_path):
    path = tmp_path / "vec.nrrd"
    img = sitk.Compose([sitk.GetImageFromArray(c) for c in four_d()])
    spacing, direction, origin = sitk_geometry()
    img.SetSpacing(spacing)
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    with pytest.raises(VolumeReadError, match="has 3 channels"):
        read_volume(path)
    vol = read_volume(path, channel=2)
    np.testing.assert_array_equal(vol.array, four_d()[2])
    assert vol.spacing == pytest.approx(spacing)
    with pytest.raises(VolumeReadError, match="out of range"):
        read_volume(write_and_return(tmp_path / "plain.nrrd", phantom()), channel=1)
    assert read_volume(tmp_path / "plain.nrrd", channel=0).shape == SHAPE  # a 3-D image has channel 0


def write_and_return(path, data):
    write_sitk(path, data)
    return path


def test_nan_and_inf_replaced_by_zero_with_warning(tmp_path):
    data = phantom().astype(np.float32)
    data[0, 0, 0], data[5, 8, 12], data[3, 4, 5] = np.nan, np.inf, -np.inf
    vol = read_volume(write_and_return(tmp_path / "nan.nrrd", data))
    assert np.isfinite(vol.array).all()
    assert vol.array[0, 0, 0] == 0 and vol.array[5, 8, 12] == 0 and vol.array[3, 4, 5] == 0
    assert vol.array[1, 1, 1] == data[1, 1, 1]
    (warning,) = vol.meta["warnings"]
    assert warning.startswith("3 voxel(s)") and "replaced by 0" in warning


def test_all_zero_volume_reads_with_warning(tmp_path):
    vol = read_volume(write_and_return(tmp_path / "zero.mha", np.zeros(SHAPE, np.int16)))
    assert vol.array.dtype == np.float32 and not vol.array.any()
    (warning,) = vol.meta["warnings"]
    assert "all voxels are 0" in warning


def test_detect_format(tmp_path):
    assert lio.detect_format("a/b.NII.GZ") == "nifti" and lio.detect_format("x.nhdr") == "nrrd"
    assert lio.detect_format("x.mhd") == "mha" and lio.detect_format(tmp_path) == "dicom"
    assert not lio.is_supported_path("x.png") and lio.is_supported_path("x.seg.nrrd")


# --------------------------------------------------------------------------- writing labels


def reference_volume():
    spacing, direction, origin = sitk_geometry()
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = origin
    return Volume(phantom().astype(np.float32), affine, {"source": "phantom"})


def cube_labels():
    labels = np.zeros(SHAPE, np.uint8)
    labels[CUBE] = 1
    labels[4, 7, 1] = 2  # a lone voxel in a far corner
    return labels


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nii", "labels.nrrd", "labels.mha"])
def test_write_labels_round_trip(tmp_path, name):
    ref = reference_volume()
    path = tmp_path / name
    write_labels(cube_labels(), ref, path)
    assert listing(tmp_path) == [name]  # no temporary file left
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, cube_labels())
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-5)
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkUInt8
    if name.startswith("labels.nii"):  # an independent reader puts the labels at the same place
        nib = pytest.importorskip("nibabel")
        img = nib.load(str(path))
        ijk = np.argwhere(np.asanyarray(img.dataobj) == 2)[0]
        lps = (LPS_FROM_RAS @ img.affine @ np.append(ijk, 1.0))[:3]
        np.testing.assert_allclose(lps, world(ref.affine, (1, 7, 4)), atol=1e-4)


def test_write_labels_refuses_existing_file_unless_overwrite(tmp_path):
    ref = reference_volume()
    path = tmp_path / "labels.nii.gz"
    path.write_bytes(b"the user's precious file")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_labels(cube_labels(), ref, path)
    assert path.read_bytes() == b"the user's precious file"
    assert listing(tmp_path) == ["labels.nii.gz"]
    write_labels(cube_labels(), ref, path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, cube_labels())
    assert listing(tmp_path) == ["labels.nii.gz"]


def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch):
    ref = reference_volume()
    path = tmp_path / "labels.nrrd"
    path.write_bytes(b"old")

    def broken(image, tmp, *args):
        with open(tmp, "wb") as f:
            f.write(b"half a fi")
        raise RuntimeError("ITK ERROR: NrrdImageIO(0x1234): disk full")

    monkeypatch.setattr(lio.sitk, "WriteImage", broken)
    with pytest.raises(OSError, match="could not write .*disk full"):
        write_labels(cube_labels(), ref, path, overwrite=True)
    assert path.read_bytes() == b"old" and listing(tmp_path) == ["labels.nrrd"]


def test_write_labels_to_unwritable_folder(tmp_path):
    ref = reference_volume()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(OSError, match="cannot write .*choose a writable output folder"):
        write_labels(cube_labels(), ref, not_a_folder / "labels.nii.gz")
    assert listing(tmp_path) == ["file"]

    with pytest.raises(FileNotFoundError, match="create it first"):
        write_labels(cube_labels(), ref, tmp_path / "missing" / "labels.nii.gz")
    assert listing(tmp_path) == ["file"]

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        probe = locked / "probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:  # running as root: chmod does not block writes
            probe.unlink()
            pytest.skip("chmod 0o500 does not block writes for this user (root)")
        with pytest.raises(PermissionError, match="cannot write .*choose a writable output folder"):
            write_labels(cube_labels(), ref, locked / "labels.nii.gz")
        assert listing(locked) == []
    finally:
        locked.chmod(stat.S_IRWXU)


def test_write_labels_bad_input_writes_nothing(tmp_path):
    ref = reference_volume()
    with pytest.raises(ValueError, match="labels have shape"):
        write_labels(cube_labels()[:, :, :-1], ref, tmp_path / "a.nii.gz")
    too_big = cube_labels().astype(np.int32)
    too_big[0, 0, 0] = 300
    with pytest.raises(ValueError, match="0..255"):
        write_labels(too_big, ref, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="use a .nii"):
        write_labels(cube_labels(), ref, tmp_path / "a.mhd")
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------- .seg.nrrd


def test_seg_nrrd_read_back_by_slicerio(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    nrrd = pytest.importorskip("nrrd")
    ref = reference_volume()
    labels = cube_labels()
    second = dict(TUMOUR, index=2, name="Satellite", color=[20, 200, 90])
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(labels, ref, path, [TUMOUR, second])
    assert listing(tmp_path) == ["case.seg.nrrd"]

    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), labels)  # slicerio gives (i, j, k)
    np.testing.assert_allclose(seg["ijkToLPS"], ref.affine, atol=1e-9)
    tumour = slicerio.segment_from_name(seg, "Tumour")
    assert tumour["labelValue"] == 1
    np.testing.assert_allclose(tumour["color"], np.array([230, 60, 40]) / 255.0, atol=1e-5)  # 0-1 floats
    assert tumour["terminology"]["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert tumour["terminology"]["type"] == ["SCT", "108369006", "Neoplasm"]
    np.testing.assert_array_equal(slicerio.segment_mask(seg, "Satellite").transpose(2, 1, 0), labels == 2)
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    assert "TerminologyEntry:Segmentation category and type" in header["Segment0_Tags"]


def test_seg_nrrd_refusals(tmp_path):
    pytest.importorskip("slicerio")
    ref = reference_volume()
    path = tmp_path / "case.seg.nrrd"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_seg_nrrd(cube_labels() == 1, ref, path, [TUMOUR])
    assert path.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match=r"label value\(s\) \[2\] have no segment"):
        write_seg_nrrd(cube_labels(), ref, path, [TUMOUR], overwrite=True)
    with pytest.raises(ValueError, match=".seg.nrrd"):
        write_seg_nrrd(cube_labels(), ref, tmp_path / "case.nrrd", [TUMOUR])
    assert path.read_bytes() == b"keep me" and listing(tmp_path) == ["case.seg.nrrd"]
    write_seg_nrrd(cube_labels() == 1, ref, path, [TUMOUR], overwrite=True)
    assert path.read_bytes() != b"keep me" and listing(tmp_path) == ["case.seg.nrrd"]
