"""Write a :class:`~LowResSegLib.images.geometry.Volume` as a synthetic single-frame MR DICOM series.

Used to make a DICOM version of a bundled sample volume (demo) and DICOM fixtures for
tests; pydicom ships only a single-slice MR, so a series must be synthesised.

Geometry (``Volume.affine`` maps (i, j, k, 1) to LPS mm; ``array`` is (k, j, i)):

* one file per k slice, InstanceNumber = k + 1, ImagePositionPatient = affine @ (0, 0, k, 1);
* ImageOrientationPatient = [unit affine column i (row direction: along a row, i.e. with
  increasing column index i), unit affine column j (column direction: with increasing row
  index j)];
* PixelSpacing = [spacing between rows = j spacing, spacing between columns = i spacing];
* SliceThickness = SpacingBetweenSlices = k spacing.

The i and j axes must be orthogonal and k must be parallel to their cross product (either
sign); sheared/tilted grids are refused with a ValueError.

Pixel data (documented choice):

* integer-valued voxels that fit uint16 (or int16) are written unchanged, with no rescale;
* anything else (e.g. float intensities) is plain-scaled through the origin,
  ``stored = round(value * s)``: non-negative data to uint16 with its maximum at 4095
  (12 bits stored), data with negatives to int16 with its largest magnitude at 32767.
  Zero stays zero (the model's normalisation treats 0 as background) and a non-zero voxel
  never rounds to 0. No RescaleSlope/Intercept is written, as the Modality LUT is not part
  of the MR Image IOD (dciodvfy warns about it); ``s`` is noted in ImageComments.
  Non-finite voxels are refused with a ValueError. MR intensities have no unit, so a
  global linear factor does not change what the (z-scoring) models see.

The attributes written are those the MR Image IOD needs for ``dciodvfy`` to report no
errors (REFERENCE.md: EchoTime, RepetitionTime, PatientPosition, Laterality,
ScanningSequence, SequenceVariant, ScanOptions, MRAcquisitionType, ImageType,
PositionReferenceIndicator, and the Frame of Reference module).

UIDs: with ``seed=None`` they are random; with a ``seed`` they are derived with
``pydicom.uid.generate_uid(entropy_srcs=...)`` from the seed, a purpose string and a
digest of the voxels and affine, so the same input and seed give the same UIDs.
"""

import datetime
import hashlib
import os

import numpy as np

__all__ = ["write_mr_series"]

_INSTALL_HINT = 'DICOM support needs the optional extra: pip install "LowResSegLib[dicom]"'

_ORTHO_TOL = 1e-4


def _import_pydicom():
    try:
        import pydicom  # noqa: F401
        from pydicom.dataset import Dataset, FileMetaDataset  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("%s (%s)" % (_INSTALL_HINT, exc))
    return pydicom


def _ds(values):
    """Format floats for DS (decimal string) attributes: at most 16 characters each."""
    out = []
    for v in values:
        v = float(v)
        if v == 0.0:
            v = 0.0  # no "-0"
        s = "%.10g" % v
        if len(s) > 16:
            s = "%.8g" % v
        out.append(s)
    return out


def _geometry(affine):
    """Row/column direction cosines, spacings and slice-direction check from the affine."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("the volume affine is degenerate: column norms %s" % (spacing,))
    dirs = m / spacing
    row_dir, col_dir, slice_dir = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    if abs(float(np.dot(row_dir, col_dir))) > _ORTHO_TOL:
        raise ValueError("the i and j axes of the volume are not orthogonal; "
                         "DICOM ImageOrientationPatient needs orthogonal row and column directions")
    normal = np.cross(row_dir, col_dir)
    if abs(abs(float(np.dot(normal, slice_dir))) - 1.0) > _ORTHO_TOL:
        raise ValueError("the k axis of the volume is not perpendicular to the slices "
                         "(sheared or tilted grid); not supported for a synthetic series")
    return row_dir, col_dir, spacing


def _pixels(array):
    """Stored pixel array (k, j, i), the attributes describing it, and the scale used."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError("the volume array must be real numeric, got %s" % a.dtype)
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError("the volume array contains NaN or infinite voxels")
    lo = float(a.min()) if a.size else 0.0
    hi = float(a.max()) if a.size else 0.0
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a)))
    scale = 1.0
    if integral and lo >= 0 and hi <= 65535:
        stored = a.astype(np.uint16)
        attrs = dict(BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=0)
    elif integral and lo >= -32768 and hi <= 32767:
        stored = a.astype(np.int16)
        attrs = dict(BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=1)
    else:
        # Plain scaling through the origin, so zero (background) stays zero and the
        # ratios between voxels are kept; no Modality LUT (not part of the MR IOD).
        x = a.astype(np.float64)
        if lo >= 0:
            top, dtype = 4095.0, np.uint16
            attrs = dict(BitsAllocated=16, BitsStored=12, HighBit=11, PixelRepresentation=0)
        else:
            top, dtype = 32767.0, np.int16
            attrs = dict(BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=1)
        peak = max(abs(lo), abs(hi))
        scale = top / peak if peak > 0 else 1.0
        q = np.round(x * scale)
        q[(q == 0) & (x != 0)] = np.sign(x[(q == 0) & (x != 0)])  # non-zero stays non-zero
        stored = np.clip(q, -top, top).astype(dtype)
    slo = float(stored.min()) if stored.size else 0.0
    shi = float(stored.max()) if stored.size else 0.0
    attrs.update(WindowCenter=_ds([(shi + slo) / 2.0])[0], WindowWidth=_ds([max(shi - slo, 1.0)])[0])
    return stored, attrs, scale


def write_mr_series(volume, outdir, patient_name="LowResSeg^Phantom", patient_id="LRS-PHANTOM",
                    series_description="LowResSeg synthetic MR", modality="MR", seed=None,
                    study_description="LowResSeg synthetic study", series_number=1,
                    file_prefix="MR", body_part="HEAD", laterality=None):
    """Write ``volume`` as an MR Image Storage series, one file per k slice, into ``outdir``.

    Returns the written file paths in k order (``<outdir>/<file_prefix>_0001.dcm`` ...).
    Only files in ``outdir`` are written (it is created if missing); existing files with
    the same names are replaced. See the module docstring for geometry, pixel scaling and
    UIDs.

    ``body_part`` (BodyPartExamined, default "HEAD", the brain phantoms' region) decides the
    General Series Laterality: it is left out for an unpaired part unless ``laterality``
    ("R"/"L") is given; with ``body_part=None`` an empty (unknown) Laterality is written,
    which dciodvfy accepts with a warning.
    """
    pydicom = _import_pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    if modality != "MR":
        raise ValueError("only MR Image Storage is supported (modality='MR'), got %r" % (modality,))
    array = np.asarray(volume.array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError("expected a non-empty 3-D (k, j, i) volume, got shape %s" % (array.shape,))
    row_dir, col_dir, spacing = _geometry(volume.affine)
    stored, pix_attrs, scale = _pixels(array)
    affine = np.asarray(volume.affine, dtype=np.float64)

    if seed is None:
        def uid(purpose):
            return generate_uid()
    else:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(array.dtype).encode())
        digest.update(np.ascontiguousarray(affine).tobytes())
        digest = digest.hexdigest()

        def uid(purpose):
            return generate_uid(entropy_srcs=["LowResSeg", str(seed), digest, purpose])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame-of-reference")
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    os.makedirs(outdir, exist_ok=True)
    paths = []
    nk = array.shape[0]
    for k in range(nk):
        sop_uid = uid("instance-%d" % k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "LOWRESSEG"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        # SOP Common
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        # Patient
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.StudyDescription = study_description
        # General Series
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.SeriesDescription = series_description
        ds.PatientPosition = "HFS"
        if body_part:
            ds.BodyPartExamined = str(body_part).upper()
        if laterality or not body_part:
            # Type 2C: absent for an unpaired body part, empty only when unknown.
            ds.Laterality = laterality or ""
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = "LowResSeg"
        ds.ManufacturerModelName = "dicomsynth"
        ds.SoftwareVersions = "LowResSeg"
        # General Image / General Acquisition
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = date, time
        ds.AcquisitionNumber = 1
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.BurnedInAnnotation = "NO"
        if scale != 1.0:
            ds.ImageComments = "stored value = round(original value x %s)" % _ds([scale])[0]
        # Image Plane
        ds.PixelSpacing = _ds([spacing[1], spacing[0]])
        ds.ImageOrientationPatient = _ds(list(row_dir) + list(col_dir))
        ds.ImagePositionPatient = _ds(affine.dot([0.0, 0.0, float(k), 1.0])[:3])
        ds.SliceThickness = _ds([spacing[2]])[0]
        ds.SpacingBetweenSlices = _ds([spacing[2]])[0]
        ds.SliceLocation = _ds([float(np.dot(np.cross(row_dir, col_dir),
                                             affine.dot([0.0, 0.0, float(k), 1.0])[:3]))])[0]
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[2])
        for key, value in pix_attrs.items():
            setattr(ds, key, value)
        # MR Image
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "10"
        ds.EchoTrainLength = 1
        ds.ImagingFrequency = "63.87"
        ds.MagneticFieldStrength = "1.5"
        ds.ImagedNucleus = "1H"
        ds.NumberOfAverages = "1"
        ds.FlipAngle = "90"

        pixels = np.ascontiguousarray(stored[k])
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()

        path = os.path.join(outdir, "%s_%04d.dcm" % (file_prefix, k + 1))
        if hasattr(ds, "save_as") and _pydicom_major(pydicom) >= 3:
            ds.save_as(path, enforce_file_format=True)
        else:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)
        paths.append(path)
    return paths


def _pydicom_major(pydicom):
    try:
        return int(str(pydicom.__version__).split(".")[0])
    except ValueError:  # pragma: no cover
        return 3
