"""``lowresseg demo``: the bundled sample through every shipped model, with every output.

label volumes (NIfTI + .seg.nrrd) per model, a DICOM version of the sample and a
DICOM-SEG of it, the comparison table (CSV/JSON) and comparison.png.
"""

import os

import numpy as np

from LowResSegLib.repository.modelstore import default_repository

SAMPLE_DIR = os.path.join(os.path.dirname(default_repository()), "SampleData")
SAMPLE_IMAGE = os.path.join(SAMPLE_DIR, "sample-flair.nii.gz")
SAMPLE_LABEL = os.path.join(SAMPLE_DIR, "sample-label.nii.gz")
DICOM_MODEL = "elunet-jhead-32to256"
MARKER = ".lowresseg-demo"  # only folders carrying it may be replaced by a later demo


def run_demo(out_dir, repository=None, overwrite=False, threads=0, log=print):
    from tqdm import tqdm

    from LowResSegLib.frontends.compare import comparison_figure, reference_volume_ml, run_comparison, write_table
    from LowResSegLib.inference.ensemble import open_engine
    from LowResSegLib.images.io import read_volume
    from LowResSegLib.repository.modelstore import ModelRepository
    from LowResSegLib.results.outputs import staged_folder, write_segmentation

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError("--out %s is a file; give a folder for the demo outputs" % out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.exists(os.path.join(out_dir, MARKER)):
            raise FileExistsError("%s is not empty and was not made by `lowresseg demo`; choose another --out "
                                  "(the demo replaces its folder as a whole)" % out_dir)
        if not overwrite:
            raise FileExistsError("%s holds an earlier demo; pass --overwrite to replace it" % out_dir)
    repo = ModelRepository(repository)
    names = sorted(repo.names(), key=lambda n: (repo.card(n)["input_size"], n))
    if not names:
        raise ValueError("no models in %s" % repo.root)
    engines = [open_engine(n, repository, threads=threads) for n in names]  # ensembles too
    volume = read_volume(SAMPLE_IMAGE)
    truth = read_volume(SAMPLE_LABEL).array.astype(np.uint8)
    log("sample: %s, %d×%d×%d voxels, spacing %s mm" % (
        os.path.relpath(SAMPLE_IMAGE), volume.shape[2], volume.shape[1], volume.shape[0],
        "×".join("%.1f" % s for s in volume.spacing)))

    bars = {}

    def progress(model, done, total):
        if model not in bars:
            bars[model] = tqdm(total=total, desc=model, unit="slice", leave=False)
        bars[model].update(done - bars[model].n)
        if done >= total:
            bars[model].close()

    rows, segs = run_comparison(volume, engines, reference=truth, progress=progress)

    with staged_folder(out_dir) as staging:
        os.makedirs(os.path.join(staging, "labels"))
        written = []
        for name, seg in segs.items():
            for ext in (".nii.gz", ".seg.nrrd"):
                written.append(write_segmentation(seg, os.path.join(staging, "labels", name + ext)))
        written += write_table(rows, staging, reference_ml=reference_volume_ml(volume, truth))
        written.append(comparison_figure(volume, segs, os.path.join(staging, "comparison.png"), reference=truth))
        dicom_note = _dicom_outputs(volume, staging, repository, threads, written) if DICOM_MODEL in names else \
            "DICOM-SEG skipped: %s is not in the repository" % DICOM_MODEL
        open(os.path.join(staging, MARKER), "w").close()
    written = [os.path.join(out_dir, os.path.relpath(p, staging)) for p in written]

    log("\n%-24s %6s %7s %8s %9s %9s" % ("model", "input", "Dice", "HD95 mm", "volume mL", "time ms"))
    for r in rows:
        log("%-24s %6s %7.3f %8.1f %9.1f %9.0f" % (r["model"], "%d²" % r["input_size"], r["dice"], r["hd95_mm"],
                                                   r["volume_ml"], 1000 * r["time_s"]))
    has_dicom = os.path.isdir(os.path.join(out_dir, "sample-dicom"))
    log("\nwrote %d files under %s:" % (len(written) + (volume.shape[0] if has_dicom else 0), out_dir))
    for p in written:
        log("  " + os.path.relpath(p, out_dir))
    if has_dicom:
        log("  sample-dicom/ (the sample as a %d-file MR series, the DICOM-SEG's source)" % volume.shape[0])
    best = max(rows, key=lambda r: r["dice"])
    fastest = min(rows, key=lambda r: r["time_s"])
    full = [r for r in rows if r["input_size"] == r["output_size"]]
    by_name = {r["model"]: r for r in rows}
    log("\nsummary:")
    log("  1. sample: %.1f mL of tumour; %d models with inputs from %d² to %d²" % (
        reference_volume_ml(volume, truth), len(rows), min(r["input_size"] for r in rows),
        max(r["input_size"] for r in rows)))
    log("  2. best Dice: %s, %.3f (HD95 %.1f mm)" % (best["model"], best["dice"], best["hd95_mm"]))
    log("  3. fastest: %s, %.0f ms for the volume%s" % (
        fastest["model"], 1000 * fastest["time_s"],
        " (%.1f× faster than %s)" % (full[0]["time_s"] / fastest["time_s"], full[0]["model"]) if full else ""))
    if "elunet-jhead-32to256" in by_name and "elunet-interp-32to256" in by_name:
        j, i = by_name["elunet-jhead-32to256"], by_name["elunet-interp-32to256"]
        log("  4. learned head vs bilinear at 32²: Dice %.3f vs %.3f, time %.0f vs %.0f ms" % (
            j["dice"], i["dice"], 1000 * j["time_s"], 1000 * i["time_s"]))
    else:
        log("  4. table: %s" % os.path.join(out_dir, "comparison.csv"))
    log("  5. " + dicom_note)
    log("look at %s first." % os.path.join(out_dir, "comparison.png"))
    return rows


def _dicom_outputs(volume, staging, repository, threads, written):
    """The sample as an MR series, segmented from DICOM, saved as DICOM-SEG, validated."""
    from LowResSegLib.results.dicomseg import run_dciodvfy, write_dicom_seg
    from LowResSegLib.images.dicomsynth import write_mr_series
    from LowResSegLib.inference.engines import LocalEngine
    from LowResSegLib.images.io import read_volume
    from LowResSegLib.inference.pipeline import segment

    series_dir = os.path.join(staging, "sample-dicom")
    # the series says what it is, as a scanner's does, so that unattended runs (pacs, batch) take it as FLAIR
    write_mr_series(volume, series_dir, series_description="LowResSeg sample FLAIR (phantom)", seed=2024)
    dicom_volume = read_volume(series_dir)
    engine = LocalEngine(DICOM_MODEL, repository, threads=threads)
    seg = segment(dicom_volume, engine)
    path = write_dicom_seg(seg.labels, dicom_volume.meta["files"], engine.card,
                           os.path.join(staging, "%s.seg.dcm" % DICOM_MODEL))
    written.append(path)
    try:
        errors, warnings = run_dciodvfy(path)
        check = "dciodvfy: %d errors, %d warnings" % (len(errors), len(warnings))
    except FileNotFoundError:
        check = "dciodvfy not installed (scripts/setup.sh installs dicom3tools)"
    return "DICOM-SEG %s (%s, %.1f mL): %s" % (os.path.basename(path), DICOM_MODEL, seg.volume_ml(), check)
