"""``lowresseg segment`` end to end: real files in, real onnxruntime (LocalEngine), real files out.

Happy paths check the written labels (NIfTI, Slicer .seg.nrrd, DICOM-SEG validated by
dciodvfy and read back). Every refusal must exit with status 2 and print ONE line on
stderr, ``lowresseg segment: error: ...``, with no traceback, and must leave the output
folder exactly as it was (names, sizes, mtimes, bytes), with no temporary files.
Inputs that are odd but usable (NaN voxels, an all-zero image, a CT series) must work
and say what happened in a warning.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.frontends.cli import main
from LowResSegLib.images.geometry import Volume
from LowResSegLib.images.io import read_volume
from LowResSegLib.images.metrics import dice
from LowResSegLib.repository.modelstore import triton_config

from model_factory import add_threshold_model
from helpers import cube_phantom, installed_tool, snapshot

MODEL = "threshold-16to64"
SHAPE = (8, 56, 64)  # (k, j, i): 56 x 64 axial slices, padded to a 64 square
BRAIN = (slice(1, 7), slice(4, 52), slice(6, 58))
CUBE = (slice(3, 7), slice(8, 24), slice(32, 44))  # off-centre on every axis
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PREFIX = "lowresseg segment: error: "
TEMP_MARKERS = (".tmp", ".part", ".lowresseg-")


def phantom():
    return cube_phantom(SHAPE, BRAIN, CUBE)


def lps_affine():
    """i runs L, j runs P, k runs S (so a DICOM series is read back in the same k order)."""
    a = np.diag([0.9, 0.8, 3.0, 1.0])
    a[:3, 3] = [-28.0, -22.0, 15.0]
    return a


def ras_affine():
    """RAS with flips: i runs L (-x), j runs A (+y), k runs I (-z)."""
    a = np.diag([-0.9, 0.8, -3.0, 1.0])
    a[:3, 3] = [30.0, -20.0, 25.0]
    return a


def write_nifti(path, data_kji, ras=None):
    nib = pytest.importorskip("nibabel")
    data = np.asarray(data_kji)
    ras = ras_affine() if ras is None else ras
    img = nib.Nifti1Image(np.moveaxis(data, [0, 1, 2], [2, 1, 0]) if data.ndim == 3 else data, ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    nib.save(img, str(path))
    return str(path)


def write_dicom(folder, data_kji):
    from LowResSegLib.images.dicomsynth import write_mr_series

    write_mr_series(Volume(np.asarray(data_kji), lps_affine()), str(folder), seed=3)
    return str(folder)


def make_ct(folder, src):
    """A CT series: the MR phantom's files relabelled as CT Image Storage with a rescale."""
    pydicom = pytest.importorskip("pydicom")
    ct = "1.2.840.10008.5.1.4.1.1.2"
    os.makedirs(str(folder))
    for name in sorted(os.listdir(src)):
        ds = pydicom.dcmread(os.path.join(src, name))
        ds.Modality = "CT"
        ds.SOPClassUID = ct
        ds.file_meta.MediaStorageSOPClassUID = ct
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.save_as(os.path.join(str(folder), name), enforce_file_format=True)
    return str(folder)


def no_temp_files(folder):
    left = [n for n in snapshot(folder) if any(m in n for m in TEMP_MARKERS)]
    assert left == [], "temporary files left behind: %s" % left


def run(capsys, *argv):
    try:
        rc = main(["segment"] + [str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc, out, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(lines) == 1, "expected ONE error line on stderr, got:\n%s" % err
    assert lines[0].startswith(PREFIX), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "wrote" not in out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli-models"))
    add_threshold_model(root, MODEL, r=16, big_r=64, threshold=2.5)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-inputs")
    img, truth = phantom()
    p = {"root": str(root)}
    p["nifti"] = write_nifti(root / "flair.nii.gz", img)
    p["dicom"] = write_dicom(root / "dicom", img)
    return p


@pytest.fixture
def out(tmp_path):
    """An output folder that already holds a file (so 'nothing changed' means something)."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep.txt").write_text("not ours")
    return d


@pytest.fixture
def common(repo):
    return ["--model", MODEL, "--repository", repo, "--threads", "1"]


def check_labels(path, reference_path=None, expect_tumour=True):
    lab = read_volume(str(path))
    img, truth = phantom()
    if reference_path is not None:
        ref = read_volume(str(reference_path))
        np.testing.assert_allclose(lab.affine, ref.affine, atol=1e-4)
        assert lab.shape == ref.shape
    assert set(np.unique(lab.array)) <= {0.0, 1.0}
    if expect_tumour:
        assert dice(lab.array, truth) > 0.9
        assert dice(lab.array, truth[:, :, ::-1]) < 0.3 and dice(lab.array, truth[:, ::-1]) < 0.3
    return lab


# --------------------------------------------------------------------------- happy paths


def test_nifti_to_nifti_and_seg_nrrd(capsys, inputs, out, common):
    before = snapshot(out)
    rc, stdout, err = run(capsys, inputs["nifti"], "--output", out / "x.nii.gz", *common)
    assert rc == 0, err
    assert "wrote %s" % (out / "x.nii.gz") in stdout and "%s: tumour" % MODEL in stdout
    assert "Traceback" not in err and "warning" not in err
    lab = check_labels(out / "x.nii.gz", inputs["nifti"])
    # the labels file keeps the input's RAS geometry
    nib = pytest.importorskip("nibabel")
    np.testing.assert_allclose(nib.load(str(out / "x.nii.gz")).affine, ras_affine(), atol=1e-4)

    rc, stdout, err = run(capsys, inputs["nifti"], "--output", out / "x.seg.nrrd", *common)
    assert rc == 0, err
    slicerio = pytest.importorskip("slicerio")
    seg = slicerio.read_segmentation(str(out / "x.seg.nrrd"))
    (segment,) = seg["segments"]
    assert segment["name"] == "Tumour" and segment["labelValue"] == 1
    np.testing.assert_array_equal(np.asarray(seg["voxels"]).transpose(2, 1, 0), lab.array.astype(np.uint8))
    np.testing.assert_allclose(seg["ijkToLPS"], lab.affine, atol=1e-4)
    assert set(snapshot(out)) == set(before) | {"x.nii.gz", "x.seg.nrrd"}
    no_temp_files(out)


def test_dicom_to_dicom_seg_and_labels(capsys, inputs, out, common):
    from LowResSegLib.results.dicomseg import read_dicom_seg, run_dciodvfy

    src_before = snapshot(inputs["dicom"])
    rc, stdout, err = run(capsys, inputs["dicom"], "--dicom-seg", out / "seg.dcm", "--output", out / "labels.nii.gz",
                          *common)
    assert rc == 0, err
    assert "wrote %s" % (out / "seg.dcm") in stdout and "wrote %s" % (out / "labels.nii.gz") in stdout
    vol = read_volume(inputs["dicom"])
    img, _ = phantom()
    np.testing.assert_array_equal(vol.array, img)  # k along the slice normal: the file order is kept
    lab = check_labels(out / "labels.nii.gz", inputs["dicom"])
    try:
        errors, warnings = run_dciodvfy(str(out / "seg.dcm"))
    except FileNotFoundError as exc:
        pytest.fail("dciodvfy is missing (%s); scripts/setup.sh installs dicom3tools" % exc)
    assert errors == [], errors
    back = read_dicom_seg(str(out / "seg.dcm"), vol.meta["files"])
    np.testing.assert_array_equal(back, lab.array.astype(np.uint8))
    assert snapshot(inputs["dicom"]) == src_before
    no_temp_files(out)


def test_installed_console_script(tmp_path, inputs, repo):
    exe = installed_tool("lowresseg")
    assert exe, "the lowresseg console script is not installed (pip install -e .)"
    out = tmp_path / "x.nii.gz"
    proc = subprocess.run([exe, "segment", inputs["nifti"], "--model", MODEL, "--repository", repo,
                           "--output", str(out), "--threads", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote %s" % out in proc.stdout and "Traceback" not in proc.stderr
    check_labels(out, inputs["nifti"])
    # and a refusal from the real process: status 2, one line, no traceback, nothing written
    missing = tmp_path / "missing.nii.gz"
    proc = subprocess.run([exe, "segment", str(missing), "--model", MODEL, "--repository", repo,
                           "--output", str(tmp_path / "y.nii.gz"), "--threads", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert_refused(proc.returncode, proc.stdout, proc.stderr, "does not exist")
    assert sorted(os.listdir(str(tmp_path))) == ["x.nii.gz"]


# --------------------------------------------------------------------------- usable but odd inputs


@pytest.mark.parametrize("ext", [
    ".nrrd",
    ".nii.gz",
])
def test_nan_and_inf_voxels_replaced_with_warning(capsys, tmp_path, out, common, ext):
    img, truth = phantom()
    data = img.astype(np.float32)
    data[0, 0, 0], data[2, 30, 7], data[7, 55, 63] = np.nan, np.inf, -np.inf
    path = tmp_path / ("nan" + ext)
    if ext == ".nrrd":
        image = sitk.GetImageFromArray(data)
        image.SetSpacing((0.9, 0.8, 3.0))
        sitk.WriteImage(image, str(path))
    else:
        write_nifti(path, data)
    rc, stdout, err = run(capsys, path, "--output", out / "x.nii.gz", *common)
    assert rc == 0, err
    assert "Traceback" not in err
    check_labels(out / "x.nii.gz", path)
    no_temp_files(out)
    assert "warning: 3 voxel(s) were NaN or Inf" in err and "replaced by 0" in err


def test_all_zero_volume_gives_empty_result_and_warning(capsys, tmp_path, out, common):
    path = write_nifti(tmp_path / "zero.nii.gz", np.zeros(SHAPE, np.int16))
    rc, stdout, err = run(capsys, path, "--output", out / "x.nii.gz", *common)
    assert rc == 0, err
    assert "warning: all voxels are 0" in err and "no tumour found" in err and "Traceback" not in err
    assert "tumour 0.0 mL" in stdout
    lab = check_labels(out / "x.nii.gz", path, expect_tumour=False)
    assert not lab.array.any()
    no_temp_files(out)


def test_ct_series_warns_but_works(capsys, tmp_path, inputs, out, common):
    path = make_ct(tmp_path / "ct", inputs["dicom"])
    rc, stdout, err = run(capsys, path, "--output", out / "x.nii.gz", *common)
    assert rc == 0, err
    assert "warning: modality is CT, not MR" in err and "Traceback" not in err
    vol = read_volume(path)
    assert vol.meta["modality"] == "CT" and vol.array.min() == -1024
    check_labels(out / "x.nii.gz", path)
    no_temp_files(out)


def four_d():
    """3 channels; the cube sits in channel 1 only (channel 0: its mirror, channel 2: none)."""
    img, truth = phantom()
    c0 = np.where(truth[:, :, ::-1] > 0, 400, np.where(img > 0, 100, 0)).astype(np.float32)
    c2 = np.where(img > 0, 100, 0).astype(np.float32)
    data = np.stack([c0, img.astype(np.float32), c2])  # (c, k, j, i)
    return data.transpose(3, 2, 1, 0)  # nibabel (i, j, k, c)


def test_4d_image_valid_channel_works(capsys, tmp_path, out, common):
    path = write_nifti(tmp_path / "4d.nii.gz", four_d())
    rc, stdout, err = run(capsys, path, "--channel", "1", "--output", out / "c1.nii.gz", *common)
    assert rc == 0, err
    check_labels(out / "c1.nii.gz")  # the cube of channel 1, not the mirrored one of channel 0
    rc, stdout, err = run(capsys, path, "--channel", "0", "--output", out / "c0.nii.gz", *common)
    assert rc == 0, err
    _, truth = phantom()
    assert dice(read_volume(str(out / "c0.nii.gz")).array, truth[:, :, ::-1]) > 0.9
    no_temp_files(out)


# --------------------------------------------------------------------------- refusals


def _corrupt_nifti(tmp, inputs, out):
    path = tmp / "corrupt.nii.gz"
    data = open(inputs["nifti"], "rb").read()
    path.write_bytes(data[:len(data) // 2])
    return [path, "--output", out / "x.nii.gz"], ["not a readable NIfTI file"]


def _corrupt_dicom(tmp, inputs, out):
    folder = tmp / "dicom-bad"
    shutil.copytree(inputs["dicom"], str(folder))
    bad = folder / sorted(os.listdir(str(folder)))[3]
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) - 40])
    return [folder, "--output", out / "x.nii.gz"], ["could not be read", str(bad)]


def _no_dicom(tmp, inputs, out):
    folder = tmp / "empty-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    return [folder, "--output", out / "x.nii.gz"], ["no DICOM image series found"]


def _two_d(tmp, inputs, out):
    path = tmp / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((56, 64), np.float32)), str(path))
    return [path, "--output", out / "x.nii.gz"], ["is 2-D"]


def _four_d_no_channel(tmp, inputs, out):
    path = write_nifti(tmp / "4d.nii.gz", four_d())
    return [path, "--output", out / "x.nii.gz"], ["has 3 channels", "--channel"]


def _four_d_bad_channel(tmp, inputs, out):
    path = write_nifti(tmp / "4d.nii.gz", four_d())
    return [path, "--channel", "3", "--output", out / "x.nii.gz"], ["channel 3 is out of range"]


def _missing_input(tmp, inputs, out):
    return [tmp / "nope.nii.gz", "--output", out / "x.nii.gz"], ["does not exist"]


def _unknown_model(tmp, inputs, out):
    return [inputs["nifti"], "--output", out / "x.nii.gz", "--model", "no-such-model"], ["unknown model 'no-such-model'"]


def _copy_repo(tmp, repo):
    copy = tmp / "repo-copy"
    shutil.copytree(repo, str(copy))
    return copy


def _tampered_model(tmp, inputs, out, repo):
    copy = _copy_repo(tmp, repo)
    onnx_path = copy / MODEL / "1" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    return [inputs["nifti"], "--output", out / "x.nii.gz", "--repository", copy], ["failed its integrity check"]


def _non_dividing_model(tmp, inputs, out, repo):
    copy = _copy_repo(tmp, repo)
    card_path = copy / MODEL / "lowresseg.json"
    card = json.loads(card_path.read_text())
    card["input_size"] = 24  # 64 % 24 != 0
    card_path.write_text(json.dumps(card, indent=2))
    (copy / MODEL / "config.pbtxt").write_text(triton_config(card))
    return [inputs["nifti"], "--output", out / "x.nii.gz", "--repository", copy], ["not a multiple of input_size 24"]


def _missing_output_folder(tmp, inputs, out):
    return [inputs["nifti"], "--output", out / "no-such-folder" / "x.nii.gz"], ["does not exist"]


def _output_parent_is_a_file(tmp, inputs, out):
    return [inputs["nifti"], "--output", out / "keep.txt" / "x.nii.gz"], ["not a folder"]


def _dicom_seg_on_nifti(tmp, inputs, out):
    return [inputs["nifti"], "--dicom-seg", out / "x.dcm", "--output", out / "x.nii.gz"], ["--dicom-seg needs DICOM input"]


def _dicom_seg_missing_folder(tmp, inputs, out):
    return [inputs["dicom"], "--dicom-seg", out / "nowhere" / "x.dcm", "--output", out / "x.nii.gz"], ["does not exist"]


def _dicom_seg_source_without_frame_of_reference(tmp, inputs, out):
    """Found from the headers before inference: the old CLI wrote --output first, then failed."""
    pydicom = pytest.importorskip("pydicom")
    folder = tmp / "no-for"
    shutil.copytree(inputs["dicom"], str(folder))
    for name in os.listdir(str(folder)):
        ds = pydicom.dcmread(str(folder / name))
        del ds.FrameOfReferenceUID
        ds.save_as(str(folder / name))
    return [folder, "--output", out / "x.nii.gz", "--dicom-seg", out / "x.dcm"], ["lacks FrameOfReferenceUID"]


def _same_output_twice(tmp, inputs, out):
    return [inputs["dicom"], "--output", out / "x.dcm", "--dicom-seg", out / "x.dcm"], ["use one of"]


def _series_not_in_folder(tmp, inputs, out):
    return [inputs["dicom"], "--series", "1.2.3.4", "--output", out / "x.nii.gz"], ["series 1.2.3.4 is not in"]


REFUSALS = {
    "dicom-seg-source-without-frame-of-reference": _dicom_seg_source_without_frame_of_reference,
    "same-output-twice": _same_output_twice,
    "series-not-in-folder": _series_not_in_folder,
    "missing-input": _missing_input,
    "corrupt-nifti": _corrupt_nifti,
    "dicom-folder-one-corrupt-file": _corrupt_dicom,
    "folder-without-dicom": _no_dicom,
    "2d-image": _two_d,
    "4d-without-channel": _four_d_no_channel,
    "4d-channel-out-of-range": _four_d_bad_channel,
    "unknown-model": _unknown_model,
    "tampered-model": _tampered_model,
    "non-dividing-model": _non_dividing_model,
    "output-folder-missing": _missing_output_folder,
    "output-parent-is-a-file": _output_parent_is_a_file,
    "dicom-seg-on-nifti": _dicom_seg_on_nifti,
    "dicom-seg-folder-missing": _dicom_seg_missing_folder,
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_is_one_clean_line_and_writes_nothing(capsys, tmp_path, inputs, repo, out, common, case):
    make = REFUSALS[case]
    try:
        argv, needles = make(tmp_path, inputs, out)
    except TypeError:
        argv, needles = make(tmp_path, inputs, out, repo)
    before, inputs_before = snapshot(out), snapshot(inputs["root"])
    # later options win in argparse, so a case may override --model / --repository
    rc, stdout, err = run(capsys, argv[0], *(common + argv[1:]))
    assert_refused(rc, stdout, err, *needles)
    assert snapshot(out) == before
    assert snapshot(inputs["root"]) == inputs_before
    no_temp_files(out)


def test_existing_output_refused_without_overwrite_replaced_with_it(capsys, inputs, out, common):
    target = out / "x.nii.gz"
    target.write_bytes(b"an older result")
    before = snapshot(out)
    rc, stdout, err = run(capsys, inputs["nifti"], "--output", target, *common)
    assert_refused(rc, stdout, err, "already exists", "--overwrite")
    assert snapshot(out) == before and target.read_bytes() == b"an older result"

    rc, stdout, err = run(capsys, inputs["nifti"], "--output", target, "--overwrite", *common)
    assert rc == 0, err
    check_labels(target, inputs["nifti"])
    assert set(snapshot(out)) == set(before)
    no_temp_files(out)


def test_existing_dicom_seg_refused_without_overwrite(capsys, inputs, out, common):
    target = out / "seg.dcm"
    target.write_bytes(b"an older SEG")
    before = snapshot(out)
    rc, stdout, err = run(capsys, inputs["dicom"], "--dicom-seg", target, "--output", out / "x.nii.gz", *common)
    assert_refused(rc, stdout, err, "already exists")
    assert snapshot(out) == before
    no_temp_files(out)


@pytest.mark.parametrize("ext", [".nhdr", ".mhd"])
def test_unwritable_label_extension_refused_before_any_work(capsys, inputs, out, common, ext):
    """Detached-header formats (.nhdr/.mhd) cannot be written atomically: refused before any work."""
    before = snapshot(out)
    rc, stdout, err = run(capsys, inputs["nifti"], "--output", out / ("x" + ext), *common)
    assert snapshot(out) == before
    no_temp_files(out)
    assert_refused(rc, stdout, err)
    assert "%s: tumour" % MODEL not in stdout  # refused up front, not after a whole inference


def test_failure_at_the_last_step_leaves_the_folder_as_it_was(capsys, monkeypatch, inputs, out, common):
    """All or nothing: the labels are written, then the SEG fails (a full disk): no file appears,
    and the existing result that --overwrite would replace is still there, byte for byte."""
    import LowResSegLib.results.dicomseg as dicomseg

    (out / "x.nii.gz").write_bytes(b"yesterday's result")
    before = snapshot(out)

    def full_disk(*args, **kwargs):
        raise OSError("could not write the DICOM-SEG: No space left on device")

    monkeypatch.setattr(dicomseg, "write_dicom_seg", full_disk)
    rc, stdout, err = run(capsys, inputs["dicom"], "--output", out / "x.nii.gz", "--dicom-seg", out / "x.dcm",
                          "--overwrite", *common)
    last = err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bar of the inference
    assert rc == 2 and last == PREFIX + "could not write the DICOM-SEG: No space left on device", err
    assert "wrote" not in stdout and "Traceback" not in err
    assert snapshot(out) == before
    no_temp_files(out)


def test_commit_puts_back_what_it_replaced_when_a_rename_fails(tmp_path, monkeypatch):
    from LowResSegLib.workflow import run as run_module

    a, b = tmp_path / "a.nii.gz", tmp_path / "b.dcm"
    a.write_bytes(b"old a")
    staged_a, staged_b = tmp_path / ".s-a.nii.gz", tmp_path / ".s-b.dcm"
    staged_a.write_bytes(b"new a")
    staged_b.write_bytes(b"new b")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst) == str(b):
            raise OSError("the disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(run_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk went away"):
        run_module.commit_files([(str(staged_a), str(a)), (str(staged_b), str(b))], overwrite=True)
    assert sorted(os.listdir(str(tmp_path))) == ["a.nii.gz"] and a.read_bytes() == b"old a"


def test_a_series_that_is_not_flair_is_warned_about_not_blocked(capsys, tmp_path, inputs, out, common):
    """A T1 given to a FLAIR model: said in the summary (DICOM headers, or a BraTS-style file name)."""
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "t1"
    shutil.copytree(inputs["dicom"], str(folder))
    for name in os.listdir(str(folder)):
        ds = pydicom.dcmread(str(folder / name))
        ds.SeriesDescription = "sag T1 MPRAGE"
        ds.save_as(str(folder / name))
    rc, stdout, err = run(capsys, folder, "--output", out / "x.nii.gz", *common)
    assert rc == 0 and (out / "x.nii.gz").exists(), err
    assert "warning: the input looks like T1 (by its DICOM headers), but %s is a FLAIR model" % MODEL in err

    named = tmp_path / "case_t2.nii.gz"
    shutil.copy(inputs["nifti"], str(named))
    rc, stdout, err = run(capsys, named, *common)
    assert rc == 0 and "looks like T2 (by its file name)" in err

    rc, stdout, err = run(capsys, inputs["nifti"], *common)  # flair.nii.gz: nothing to say
    assert rc == 0 and "looks like" not in err


def test_an_implausibly_large_mask_is_warned_about(capsys, tmp_path, inputs):
    """A model that marks the whole head (as the old models did on a T1): > 400 mL is flagged."""
    repo = str(tmp_path / "models")
    add_threshold_model(repo, "everything-16to64", r=16, big_r=64, threshold=0.1)
    path = write_nifti(tmp_path / "big.nii.gz", phantom()[0], np.diag([-5.0, 5.0, 5.0, 1.0]))  # 5 mm voxels
    rc, stdout, err = run(capsys, path, "--model", "everything-16to64", "--repository", repo)
    assert rc == 0, err
    ml = float(stdout.split("tumour ")[1].split(" mL")[0])
    assert ml > 400 and "more than any real tumour we know of (400 mL)" in err
