"""``lowresseg`` command line: models, segment, batch, pacs, compare, demo, phantom, fetch-real, train, export.

Heavy imports (torch, SimpleITK) happen inside the subcommand that needs them, so
``lowresseg models`` starts fast and works without the training extra.
"""

import argparse
import os
import shlex
import shutil
import sys
import tempfile

from LowResSegLib.workflow.run import AUTO  # the model name that asks for a choice by time budget


def cmd_models(args):
    from LowResSegLib.repository.modelstore import ModelRepository, ModelStoreError

    repo = ModelRepository(args.repository)
    names = repo.names()
    if not names:
        print("no models in %s" % repo.root)
        return 1
    rows = [("model", "input", "output", "head params", "backbone params", "val Dice", "sha256")]
    bad = 0
    for name in names:
        ok, msg = repo.check(name)
        try:
            card = repo.card(name)
            inputs = "/".join(map(str, card.get("member_input_sizes") or [card["input_size"]]))  # an ensemble: all
            rows.append((name, "%s²" % inputs, "%d²" % card["output_size"],
                         str(card["params"]["head"]), str(card["params"]["backbone"]),
                         "%.3f" % card["metrics"]["val_dice_at_output_size"]
                         if "val_dice_at_output_size" in card["metrics"] else "–",  # an ensemble: none of its own
                         "ok" if ok else "FAILED"))
        except ModelStoreError:
            rows.append((name, "?", "?", "?", "?", "?", "FAILED"))
        if not ok:
            bad += 1
            rows.append(("  -> " + msg, "", "", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows if not r[0].startswith("  ->")) for i in range(len(rows[0]))]
    for r in rows:
        if r[0].startswith("  ->"):
            print(r[0])
        else:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("%d model(s) in %s%s" % (len(names), repo.root, "; %d failed the check" % bad if bad else ""))
    return 1 if bad else 0


def _tqdm_progress(desc):
    from tqdm import tqdm

    state = {}

    def progress(done, total):
        if not sys.stderr.isatty():
            return  # bars glue together in a log file; the summary line says what was done
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="slice")
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()
    return progress


def _print_warnings(volume):
    for w in volume.meta.get("warnings", []):
        print("warning: %s" % w, file=sys.stderr)


def cmd_segment(args):
    from LowResSegLib.workflow.run import SegmentationRun

    _check_budget(args, args.model == AUTO)
    run = SegmentationRun(args.input, args.model, labels_out=args.output, dicom_seg_out=args.dicom_seg,
                          overwrite=args.overwrite, channel=args.channel, series=args.series,
                          repository=args.repository, threads=args.threads, budget=args.budget, log=_log,
                          engine=_remote(args, args.model), uncertainty_out=args.uncertainty)
    run.plan()  # every check that needs no inference: a bad path or series fails here, in a second
    if run.choice is not None:
        print("model auto: %s" % run.choice.reason)
        args.model = run.choice.name
    seg = run.execute(progress=_tqdm_progress(args.model))
    for path in run.commit():
        print("wrote %s" % path)
    t = seg.timings
    print("%s: tumour %.1f mL; %d slices in %.2f s (%.1f ms/slice: preprocess %.0f ms, inference %.0f ms, "
          "postprocess %.0f ms)" % (args.model, seg.volume_ml(), t["slices"], t["total_s"], t["ms_per_slice"],
                                    t["preprocess_ms"], t["infer_ms"], t["postprocess_ms"]))
    if hasattr(seg, "review_score"):  # an ensemble: how much its members agree, and whether to review
        print("%s: %s" % (args.model, seg.review_line()))
    for w in run.warnings:
        print("warning: %s" % w, file=sys.stderr)
    if not run.written:
        print("(nothing written: pass --output OUT.nii.gz|OUT.seg.nrrd and/or --dicom-seg OUT.dcm)")
    return 0


SERVER_HELP = ("run the models on this edge server (`lowresseg serve`, or Triton), e.g. http://jetson:8000, instead "
               "of here; docs/jetson.md")


def _add_server_options(parser):
    parser.add_argument("--server", metavar="URL", help=SERVER_HELP)
    parser.add_argument("--token-file", help="with --server: file holding the server's bearer token (mode 600)")
    parser.add_argument("--token-env", metavar="VAR", help="with --server: environment variable holding the token")
    parser.add_argument("--server-ca", metavar="PEM", help="with --server: the CA of a server's self-signed TLS "
                                                           "certificate (TLS is always verified)")


def _remote(args, model):
    """The RemoteEngine for ``model`` when ``--server`` is given, else None; the token never on the command line."""
    if not getattr(args, "server", None):
        if getattr(args, "token_file", None) or getattr(args, "token_env", None) or getattr(args, "server_ca", None):
            raise ValueError("--token-file, --token-env and --server-ca go with --server URL")
        return None
    from LowResSegLib.edge.tokens import read_token
    from LowResSegLib.inference.engines import RemoteEngine, RemoteServer
    from LowResSegLib.inference.ensemble import open_engine

    if model == AUTO:
        raise ValueError("--model auto chooses among the models here; with --server name the model (see the "
                         "server's models: curl URL/v2/repository/index)")
    if args.token_file and args.token_env:
        raise ValueError("give the server's token once: --token-file or --token-env, not both")
    token = None
    if args.token_file:
        try:
            token = read_token(args.token_file, min_chars=1)
        except OSError as exc:
            raise ValueError("cannot read the token file %s (%s)" % (args.token_file, exc.strerror or exc))
    elif args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise ValueError("the environment variable %s is not set; put the server's token in it" % args.token_env)
    # an ensemble of the local repository runs its members on the server, over one connection
    server = RemoteServer(args.server, token, args.server_ca)
    return open_engine(model, getattr(args, "repository", None),
                       engine_for=lambda member: RemoteEngine(args.server, member, server=server))


def _log(text):
    print(text, file=sys.stderr, flush=True)


def _check_budget(args, auto):
    if auto and args.budget is None:
        raise ValueError("--model auto needs --budget: seconds per volume (1.5s, 800ms) or fastest, balanced, best")
    if args.budget is not None and not auto:
        raise ValueError("--budget applies to --model auto only")
    if args.budget is not None:
        from LowResSegLib.inference.modelchoice import PRESETS, parse_budget

        text = str(args.budget).strip()
        if text.lower() not in PRESETS:
            if text.startswith("-"):
                raise ValueError("--budget %s: a time budget must be more than 0 s (e.g. 1.5s, 800ms), or fastest, "
                                 "balanced, best" % text)
            seconds = parse_budget(text)  # a ValueError says what it cannot read
            if seconds <= 0:
                raise ValueError("--budget %s: a time budget must be more than 0 s (e.g. 1.5s, 800ms); for the "
                                 "fastest model say --budget fastest" % text)


def _auto_choice(args, slices):
    """The model ``auto`` stands for, on this machine, for a volume of ``slices`` axial slices."""
    from LowResSegLib.inference.ensemble import open_engine
    from LowResSegLib.inference.modelchoice import choose_model
    from LowResSegLib.repository.modelstore import ModelRepository

    repo = ModelRepository(args.repository)
    names = repo.usable_names()
    choice = choose_model(names, args.budget, lambda n: open_engine(n, args.repository, threads=args.threads),
                          slices=slices, log=_log)
    print("model auto: %s" % choice.reason)
    return choice


def cmd_batch(args):
    from LowResSegLib.workflow.batch import CSV_NAME, FolderInUse, run_batch
    from LowResSegLib.inference.modelchoice import BRATS_SLICES

    _check_budget(args, args.model == AUTO)
    engine = _remote(args, args.model)
    if args.model == AUTO:  # one model for the whole batch, sized for a 240x240x155 volume
        choice = _auto_choice(args, BRATS_SLICES)
        args.model, engine = choice.name, choice.engine
    try:
        rows = run_batch(args.root, args.model, args.out, dicom_seg=args.dicom_seg, overwrite=args.overwrite,
                         repository=args.repository, threads=args.threads, engine=engine,
                         accept_unknown_contrast=args.accept_unknown_contrast, progress=sys.stderr.isatty(),
                         uncertainty=args.uncertainty)
    except FolderInUse as exc:
        print("lowresseg batch: error: %s" % exc, file=sys.stderr)
        return 2
    count = {}
    for r in rows:
        count[r.get("status")] = count.get(r.get("status"), 0) + 1
        if r.get("status") == "failed":
            print("failed: %s: %s" % (r["case"], r.get("message", "")), file=sys.stderr)
    unsaved = [r for r in rows if r.get("report_error")]
    if unsaved:
        print("error: %s could not be updated for %d case(s) (%s): %s" % (
            CSV_NAME, len(unsaved), ", ".join(r["case"] for r in unsaved[:5]) + (", ..." if len(unsaved) > 5 else ""),
            unsaved[-1]["report_error"]), file=sys.stderr)
    flagged = [r for r in rows if r.get("review") == "yes"]
    if flagged:  # an ensemble whose members disagree on these: a human should look
        print("review: %d case(s) flagged, the ensemble's members disagree (review column of %s): %s" % (
            len(flagged), CSV_NAME,
            ", ".join(r["case"] for r in flagged[:10]) + (", ..." if len(flagged) > 10 else "")))
    print("%d case(s) done, %d skipped (done before), %d failed; summary in %s"
          % (count.get("done", 0), count.get("skipped", 0), count.get("failed", 0),
             os.path.join(args.out, CSV_NAME)))
    return 1 if count.get("failed") or unsaved else 0


def cmd_pacs(args):
    import re

    from LowResSegLib.hospital.pacs import PacsError, load_auth, run_pacs

    if args.series and not args.study:
        raise ValueError("--series picks a series of one study: give --study UID with it")
    if args.study_date and not re.match(r"^(\d{8})?(-(\d{8})?)?$", args.study_date):
        raise ValueError("--study-date %r must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left "
                         "out)" % args.study_date)
    filters = {k: v for k, v in (("PatientID", args.patient_id), ("StudyInstanceUID", args.study),
                                 ("StudyDate", args.study_date)) if v}
    engine = _remote(args, args.model)
    try:
        auth = load_auth(args.auth_file, args.auth_env)
        rows = run_pacs(args.url, args.model, filters, report=None if args.dry_run else args.report, auth=auth,
                        ca_bundle=args.ca_bundle, force=args.force, dry_run=args.dry_run, series_uid=args.series,
                        repository=args.repository, threads=args.threads, timeout=args.timeout,
                        retries=args.retries, store_timeout=args.store_timeout, study_timeout=args.study_timeout,
                        accept_unknown_contrast=args.accept_unknown_contrast, engine=engine,
                        progress=sys.stderr.isatty())
    except PacsError as e:
        print("lowresseg pacs: error: %s" % e, file=sys.stderr)
        return 2
    count = {}
    for r in rows:
        count[r["status"]] = count.get(r["status"], 0) + 1
        if args.dry_run or r["status"] in ("refused", "failed", "unverified"):
            print("%s: study %s (patient %s): %s" % (r["status"], r["study"], r["patient_id"] or "-", r["message"]),
                  file=sys.stdout if args.dry_run else sys.stderr)
        if r.get("report_error"):
            print("error: study %s: the report was not updated: %s" % (r["study"], r["report_error"]),
                  file=sys.stderr)
    if args.dry_run:
        print("dry run: %d study(ies) found, %d would be segmented; nothing retrieved, stored or written"
              % (len(rows), count.get("planned", 0)))
        return 0
    print("%d study(ies): %d SEG(s) stored, %d skipped (already done), %d refused, %d failed%s; report in %s"
          % (len(rows), count.get("done", 0), count.get("skipped", 0), count.get("refused", 0),
             count.get("failed", 0), ", %d stored but not verified" % count["unverified"] if count.get("unverified")
             else "", args.report))
    return 1 if count.get("refused") or count.get("failed") or count.get("unverified") or \
        any(r.get("report_error") for r in rows) else 0


def cmd_compare(args):
    from LowResSegLib.frontends.compare import comparison_figure, reference_volume_ml, run_comparison, write_table
    from LowResSegLib.inference.ensemble import open_engine
    from LowResSegLib.images.io import read_volume
    from LowResSegLib.results.outputs import labels_on_grid
    from LowResSegLib.workflow.run import card_contrast, commit_files

    from LowResSegLib.inference.modelchoice import axial_slices
    from LowResSegLib.repository.modelstore import ModelRepository

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise ValueError("--models needs at least one model name (see `lowresseg models`)")
    _check_budget(args, AUTO in names)
    out = os.path.abspath(args.out)
    targets = [os.path.join(out, f) for f in ("comparison.csv", "comparison.json", "comparison.png")]
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError("--out %s is a file, not a folder" % out)
    for t in targets:
        if os.path.exists(t) and not args.overwrite:
            raise FileExistsError("%s already exists; pass --overwrite to replace it" % t)
    if args.server and AUTO in names:
        _remote(args, AUTO)  # the one clear error
    first = next((n for n in names if n != AUTO), None)
    if args.server:
        first_card = _remote(args, first).card
    else:
        repo = ModelRepository(args.repository)
        first = first or (repo.names() or [None])[0]
        first_card = repo.card(first) if first else None
    volume = read_volume(args.input, channel=args.channel, series=args.series,
                         contrast=card_contrast(first_card) if first_card else None)
    _print_warnings(volume)
    if AUTO in names:  # the model that fits the budget for this volume
        choice = _auto_choice(args, axial_slices(volume))
        names = list(dict.fromkeys(choice.name if n == AUTO else n for n in names))
    engines = [_remote(args, n) or open_engine(n, args.repository, threads=args.threads) for n in names]
    ref = None
    if args.reference_label:
        ref_vol = read_volume(args.reference_label)
        ref = labels_on_grid((ref_vol.array > 0).astype("uint8"), ref_vol.affine, volume)
    tty = sys.stdout.isatty()
    rows, segs = run_comparison(volume, engines, reference=ref,
                                progress=(lambda m, d, t: print("\r%s %d/%d" % (m, d, t), end="", flush=True))
                                if tty else None)
    if tty:
        print()
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".lowresseg-compare-", dir=out)  # all three files appear together, or none
    try:
        write_table(rows, staging, reference_ml=reference_volume_ml(volume, ref) if ref is not None else None)
        comparison_figure(volume, segs, os.path.join(staging, "comparison.png"), reference=ref)
        commit_files([(os.path.join(staging, os.path.basename(t)), t) for t in targets], args.overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print("%-26s %6s %9s %9s %8s %9s  vs" % ("model", "input", "time s", "mL", "Dice", "HD95 mm"))
    for r in rows:
        print("%-26s %6s %9.2f %9.1f %8.3f %9.1f  %s" % (r["model"], "%d²" % r["input_size"], r["time_s"],
                                                        r["volume_ml"], r["dice"], r["hd95_mm"], r["reference"]))
    for name, seg in segs.items():
        if hasattr(seg, "review_score"):  # an ensemble: how much its members agree, and whether to review
            print("%s: %s" % (name, seg.review_line()))
    print("wrote %s" % ", ".join(targets))
    return 0


def cmd_demo(args):
    from LowResSegLib.frontends.demo import run_demo

    run_demo(args.out, args.repository, overwrite=args.overwrite, threads=args.threads)
    return 0


# what the training-side commands import beyond the runtime (the [train] extra); checked before anything is written
TRAINING_NEEDS = {"phantom": ("scipy", "nilearn", "nibabel"), "train": ("torch", "scipy", "nilearn", "nibabel"),
                  "export": ("torch", "onnx"), "tune-postprocess": ("scipy", "nilearn", "nibabel")}


def _check_training_side(command):
    """One line naming what to install when a training-side command runs in a runtime-only environment."""
    import importlib

    missing = []
    for name in TRAINING_NEEDS.get(command, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError("`lowresseg %s` is a training-side command and needs the full set-up (missing: %s): run "
                         "scripts/setup.sh (without 'runtime'), or pip install \"LowResSegLib[train]\""
                         % (command, ", ".join(missing)))


def cmd_phantom(args):
    from LowResSegLib.training.phantom import write_phantoms

    paths = write_phantoms(args.outdir, args.n, args.seed, style=args.style, grid=args.grid)
    print("wrote %d phantom case(s) to %s (images/, labels/, NOTICE-MNI152.txt)" % (len(paths), args.outdir))
    return 0


def cmd_fetch_real(args):
    if args.source == "lgg":
        return _fetch_lgg(args)
    if args.from_path:
        raise ValueError("--from is for --source lgg; the real cases are downloaded from GitHub")
    from LowResSegLib.training.realdata import fetch, real_data_dir

    n = fetch(args.split, args.dest)
    print("real cases (%s) are in %s: %d file(s) downloaded, the rest already there and verified"
          % (args.split, args.dest or real_data_dir(), n))
    return 0


def _fetch_lgg(args):
    from LowResSegLib.training.lggdata import fetch_lgg, lgg_data_dir, lgg_manifest, open_source

    source = open_source(args.from_path, lgg_manifest()) if args.from_path else None
    try:
        n = fetch_lgg(args.split, args.dest, source)
    finally:
        if source is not None:
            source.close()
    print("LGG patients (%s) are in %s: %d restored, the rest already there and verified; "
          "train with --data lgg:train%s" % (args.split, args.dest or lgg_data_dir(), n,
                                            "" if not args.dest else " after export LOWRESSEG_LGG_DATA=" + args.dest))
    return 0


def cmd_train(args):
    from LowResSegLib.training.trainer import train

    cfg = dict(vars(args))
    cfg.pop("func")
    cfg["command"] = "lowresseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if cfg["out"] is None:
        cfg["out"] = "runs/%s-%s-%dto%d" % (args.backbone, args.head, args.input_size, args.output_size)
    state = train(cfg)
    print("best val Dice %.4f at epoch %d (%s); run folder %s" % (
        state["best_dice"], state["best_epoch"], state["stopped"], cfg["out"]))
    return 0


def cmd_export(args):
    from LowResSegLib.repository.modelstore import ModelRepository
    from LowResSegLib.training.export import export_run
    from LowResSegLib.training.tensorrt_ops import check_tensorrt82
    import os

    path = export_run(args.run, args.repository, overwrite=args.overwrite, calibrate=not args.no_calibrate,
                      checkpoint=args.checkpoint, name=args.name)
    problems = check_tensorrt82(os.path.join(path, "1", "model.onnx"))
    print("exported %s" % path)
    card = ModelRepository(args.repository).card(os.path.basename(path))
    cal = card.get("calibration") or {}
    if cal.get("at_grid_edge"):
        print("warning: the volume threshold %.2f is at the end of the calibration grid (median volume error %+.0f %% "
              "at 0.5 on the run's validation split): the model's volumes are far off there; check its data mix"
              % (cal["threshold"], 100 * cal["median_signed_error_at_0.5"]))
    for p in problems:
        print("warning (TensorRT 8.2): %s" % p)
    return 0


def cmd_tune_postprocess(args):
    from LowResSegLib.training.tune_postprocess import tune, write_tuned

    for model in args.models:
        entry, scores = tune(model, args.repository, seed=args.seed, n=args.cases)
        write_tuned(model, args.repository, entry)
        print("%s: drop components < %g mL or with peak probability < %g (%s)"
              % (model, entry["min_component_ml"], entry["min_component_peak"], entry["tuned_on"]))
    return 0


def _seconds(text):
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("must be more than 0 s, got %s" % text)
    return value


BUDGET_HELP = ("with --model auto: time per volume on this machine, e.g. 1.5s or 800ms, or fastest, balanced, best; "
               "picks the best model in the cards that fits (timed once per engine and model, then cached)")


def build_parser():
    from LowResSegLib.repository.modelstore import default_repository
    from LowResSegLib.training.slices import AUGMENTATIONS, DEFAULT_AUGMENTATION

    p = argparse.ArgumentParser(
        prog="lowresseg",
        description="Brain-tumour segmentation from low-resolution MRI slices with a learned upsampling head "
                    "(J-Net). Research use only, not for diagnosis.")
    sub = p.add_subparsers(dest="command")

    m = sub.add_parser("models", help="list the shipped models and check their integrity")
    m.add_argument("--repository", default=default_repository(), help="model repository folder")
    m.set_defaults(func=cmd_models)

    sg = sub.add_parser("segment", help="segment one MRI volume (NIfTI, NRRD, MHA or a DICOM series folder)")
    sg.add_argument("input", help="the MRI volume: a NIfTI, NRRD or MetaImage file, or a folder of DICOM files")
    sg.add_argument("--model", required=True, help="model name (see `lowresseg models`), or auto with --budget")
    sg.add_argument("--budget", default=None, help=BUDGET_HELP)
    sg.add_argument("--output", help="labels: OUT.nii.gz, OUT.nrrd, OUT.mha or a Slicer OUT.seg.nrrd")
    sg.add_argument("--dicom-seg", help="DICOM-SEG output (DICOM input only)")
    sg.add_argument("--uncertainty", metavar="OUT", help="ensemble models only: the members' disagreement map "
                    "(OUT.nii.gz, .nrrd or .mha; per voxel the %% of members calling it tumour where they disagree)")
    sg.add_argument("--channel", type=int, default=None,
                    help="channel of a 4-D / multi-component image, or volume of a DICOM series that holds several")
    sg.add_argument("--series", default=None, help="SeriesInstanceUID to read from a DICOM folder holding several")
    sg.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    sg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    sg.add_argument("--repository", default=default_repository(),
                    help="model repository folder (default: the shipped models)")
    _add_server_options(sg)
    sg.set_defaults(func=cmd_segment)

    bt = sub.add_parser("batch", help="segment every case under a folder tree (image files and DICOM studies)")
    bt.add_argument("root", help="folder tree: NIfTI/NRRD/MHA files and DICOM folders (the FLAIR of each study)")
    bt.add_argument("--model", required=True, help="model name (see `lowresseg models`), or auto with --budget")
    bt.add_argument("--budget", default=None, help=BUDGET_HELP + " (sized for a 240x240x155 volume)")
    bt.add_argument("--out", required=True, help="output folder: <case>.nii.gz per case and batch.csv")
    bt.add_argument("--dicom-seg", action="store_true", help="also write <case>.seg.dcm for DICOM cases")
    bt.add_argument("--uncertainty", action="store_true", help="ensemble models only: also write the members' "
                    "disagreement map as <case>.disagreement.nii.gz")
    bt.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    bt.add_argument("--overwrite", action="store_true", help="redo cases already done and replace their outputs")
    bt.add_argument("--accept-unknown-contrast", action="store_true",
                    help="segment DICOM series whose headers name no contrast (refused by default: docs/dicom.md)")
    bt.add_argument("--repository", default=default_repository())
    _add_server_options(bt)
    bt.set_defaults(func=cmd_batch)

    pc = sub.add_parser("pacs", help="segment the FLAIR of each study on a DICOMweb server (PACS) and store the "
                                     "DICOM-SEG back into the study (docs/pacs.md)")
    pc.add_argument("url", help="the server's DICOMweb root, e.g. http://orthanc:8042/dicom-web")
    pc.add_argument("--model", required=True, help="model name (see `lowresseg models`)")
    pc.add_argument("--patient-id", help="only studies of this PatientID")
    pc.add_argument("--study", help="only the study with this StudyInstanceUID")
    pc.add_argument("--series", help="with --study: the SeriesInstanceUID to read (else the FLAIR, docs/dicom.md)")
    pc.add_argument("--study-date", help="only studies of this date, YYYYMMDD, or a range YYYYMMDD-YYYYMMDD")
    pc.add_argument("--report", default="pacs.csv", help="CSV report, one row per study (default ./pacs.csv)")
    pc.add_argument("--auth-file", help="file holding 'USER:PASSWORD' (HTTP basic) or 'bearer TOKEN'")
    pc.add_argument("--auth-env", help="environment variable holding the same (default: LOWRESSEG_PACS_AUTH when set)")
    pc.add_argument("--ca-bundle", help="PEM file of the CA that signed the server's TLS certificate")
    pc.add_argument("--timeout", type=_seconds, default=30.0,
                    help="seconds one try of a search or retrieve may take, answer and all (default 30)")
    pc.add_argument("--store-timeout", type=_seconds, default=300.0,
                    help="seconds a store (STOW-RS) may wait for its answer (default 300); a store is never resent")
    pc.add_argument("--study-timeout", type=_seconds, default=1800.0,
                    help="seconds all the transfers of one study may take, retries included (default 1800)")
    pc.add_argument("--retries", type=int, default=3, help="retries of a failed search or retrieve (default 3)")
    pc.add_argument("--force", action="store_true", help="segment studies that already have a SEG of this model "
                                                         "version (a new SEG is added; none is replaced)")
    pc.add_argument("--accept-unknown-contrast", action="store_true",
                    help="segment series whose headers name no contrast (refused by default; a series that names "
                         "another contrast is always refused unless picked with --series)")
    pc.add_argument("--dry-run", action="store_true", help="list what would be done; retrieve, store and write nothing")
    pc.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    pc.add_argument("--repository", default=default_repository())
    _add_server_options(pc)
    pc.set_defaults(func=cmd_pacs)

    sub.add_parser("serve", help="the edge inference server (KServe v2 / Triton-compatible): the options of "
                                 "`python3 -m LowResSegLib.edge.server`, see `lowresseg serve --help`")

    cp = sub.add_parser("compare", help="run several models (input resolutions) on one volume, side by side")
    cp.add_argument("input")
    cp.add_argument("--models", required=True, help="comma-separated model names; auto (with --budget) is the "
                                                    "model that fits the budget")
    cp.add_argument("--budget", default=None, help=BUDGET_HELP.replace("with --model auto", "with auto in --models"))
    cp.add_argument("--reference-label", help="ground-truth label volume (else: agreement with the highest resolution)")
    cp.add_argument("--out", required=True, help="folder for comparison.csv/.json/.png")
    cp.add_argument("--channel", type=int, default=None, help="channel of a 4-D image / volume of a DICOM series")
    cp.add_argument("--series", default=None, help="SeriesInstanceUID to read from a DICOM folder holding several")
    cp.add_argument("--threads", type=int, default=0)
    cp.add_argument("--overwrite", action="store_true")
    cp.add_argument("--repository", default=default_repository())
    _add_server_options(cp)
    cp.set_defaults(func=cmd_compare)

    dm = sub.add_parser("demo", help="segment the bundled sample with every shipped model and write every output")
    dm.add_argument("--out", default="lowresseg-demo", help="output folder (default ./lowresseg-demo)")
    dm.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    dm.add_argument("--threads", type=int, default=0)
    dm.add_argument("--repository", default=default_repository())
    dm.set_defaults(func=cmd_demo)

    ph = sub.add_parser("phantom", help="write synthetic brain-tumour FLAIR phantoms (NIfTI)")
    ph.add_argument("outdir")
    ph.add_argument("--n", type=int, default=4, help="number of cases (default 4)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--style", default="auto", choices=["auto", "stripped", "raw"],
                    help="skull-stripped, a raw head (skull, scalp, neck, noisy background) or a random mix")
    ph.add_argument("--grid", default="auto", choices=["auto", "iso", "thick"],
                    help="1 mm, clinical 3-6 mm slices (axial, coronal or sagittal) or a random mix")
    ph.set_defaults(func=cmd_phantom)

    t = sub.add_parser("train", help="train a model (resumable with --resume)")
    t.add_argument("--backbone", default="elunet", choices=["elunet", "unet", "dsunet"])
    t.add_argument("--head", default="jhead", choices=["interp", "jhead", "full"])
    t.add_argument("--input-size", type=int, default=32)
    t.add_argument("--output-size", type=int, default=256)
    t.add_argument("--width", type=int, default=8, help="backbone width n (default 8)")
    t.add_argument("--data", default="phantom:40:1",
                   help="phantom:N[:seed[:faint|healthy|capped]] | real:train|val|all (after fetch-real) | lgg:train|val|all "
                        "(after fetch-real --source lgg) | lgg:PATH (a kaggle_3m folder) | msd:PATH | folder:PATH; "
                        "join sources with '+', repeat one with '*N' (e.g. phantom:120:1+real:train*4)")
    t.add_argument("--modality", default="FLAIR", help="MSD modality name or index")
    t.add_argument("--label", default="wt", help="label mapping: wt, tc, et, eq:N, in:A,B")
    t.add_argument("--val-fraction", type=float, default=0.15)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--stop-after", type=int, default=0,
                   help="end the run after this epoch, keeping the learning-rate schedule of --epochs, so that a "
                        "later --resume (without it) finishes the same run (0: run all epochs)")
    t.add_argument("--patience", type=int, default=8, help="early stop after this many epochs without a better val Dice")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--neg-ratio", type=float, default=0.3, help="tumour-free slices per tumour slice (default 0.3)")
    t.add_argument("--max-slices", type=int, default=0, help="cap the slices per epoch (0: no cap)")
    t.add_argument("--max-val-slices", type=int, default=600, help="cap the (fixed) validation slices (0: no cap)")
    t.add_argument("--ema", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights with this decay per batch, "
                        "e.g. 0.998 (0: the raw weights)")
    t.add_argument("--augment", default=DEFAULT_AUGMENTATION, choices=sorted(AUGMENTATIONS),
                   help="augmentation plan: standard; context (wider zoom, and tumours left with little normal "
                        "tissue around them); cut (only the latter); cut-bright (the cut, only for tumours >= 1 SD above "
                        "the brain); cut-large (cut-bright in half of the slices where the tumour fills >= 20%% of "
                        "the brain, no others); see docs/method.md")
    t.add_argument("--crop", type=int, default=0, help="full-resolution models: train on random crops of this size")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--workers", type=int, default=0,
                   help="processes that make the augmented batches (0: the training process; a GPU needs several "
                        "to be kept busy). The batches are the same for any number")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: torch's bfloat16 autocast for the forward pass (fast on CPUs with bfloat16 units, "
                        "e.g. AMX; bench/train_speed.py --bf16 measures it here); the loss stays fp32")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--cache-dir", default=None, help="slice cache (default ~/.cache/lowresseg or $LOWRESSEG_CACHE)")
    t.add_argument("--out", default=None, help="run folder (default runs/<model name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.set_defaults(func=cmd_train)

    fr = sub.add_parser("fetch-real", help="download the real labelled cases of the manifest (sha256-checked)")
    fr.add_argument("--source", default="real", choices=["real", "lgg"],
                    help="real: the BraTS / UPENN-GBM cases (real:SPLIT); lgg: the LGG FLAIR patients of kaggle_3m "
                         "(lgg:SPLIT; reserved TCGA_CS_* patients are never fetched)")
    fr.add_argument("--split", default="all", choices=["all", "train", "val"])
    fr.add_argument("--dest", default=None, help="folder (default ~/.cache/lowresseg/real or $LOWRESSEG_REAL_DATA; "
                                                 "for lgg <that>/kaggle_3m or $LOWRESSEG_LGG_DATA)")
    fr.add_argument("--from", dest="from_path", default=None,
                    help="lgg only, offline: a clone of the manifest's repository holding its commit, or a "
                         "downloaded kaggle_3m folder (each patient is checked against its sha256)")
    fr.set_defaults(func=cmd_fetch_real)

    e = sub.add_parser("export", help="export a run to the model repository (ONNX opset 13 + model card)")
    e.add_argument("run", help="run folder written by `lowresseg train`")
    e.add_argument("--repository", default=default_repository())
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--name", default=None,
                   help="the model's name in the repository (default: from its options, e.g. elunet-jhead-32to256)")
    e.add_argument("--checkpoint", choices=("best", "final"), default="best",
                   help="best: the epoch of highest validation-split Dice (default); final: the weights of the last "
                        "epoch (the moving average with --ema)")
    e.add_argument("--no-calibrate", action="store_true",
                   help="keep the 0.5 threshold (default: the volume threshold chosen on the run's validation split)")
    e.set_defaults(func=cmd_export)

    tp = sub.add_parser("tune-postprocess", help="tune each model's weak-component filter on held-apart phantoms "
                                                 "and store it in its model card")
    tp.add_argument("models", nargs="+", help="model names in the repository")
    tp.add_argument("--repository", default=default_repository())
    tp.add_argument("--seed", type=int, default=7, help="phantom seed (default 7: not used by training or benchmarks)")
    tp.add_argument("--cases", type=int, default=8, help="phantoms, each in every variant (default 8)")
    tp.set_defaults(func=cmd_tune_postprocess)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # one server CLI, shared with `python3 -m LowResSegLib.edge.server` (Python 3.6)
        from LowResSegLib.edge import server

        return server.main(argv[1:])
    argv = ["--budget=" + argv[i + 1] if a == "--budget" and i + 1 < len(argv) and argv[i + 1][:1] == "-"
            and argv[i + 1][1:2] in tuple("0123456789.") else a
            for i, a in enumerate(argv) if not (i and argv[i - 1] == "--budget" and a[:1] == "-"
                                                and a[1:2] in tuple("0123456789."))]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    restore = _end_cleanly_on_sigterm()
    try:
        _check_training_side(args.command)
        return args.func(args)
    except (ValueError, OSError) as e:  # incl. VolumeReadError, ModelStoreError, FileExistsError, PermissionError
        print("lowresseg %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2
    except Terminated:
        print("lowresseg %s: terminated (SIGTERM); nothing partial was left" % args.command, file=sys.stderr)
        return 143
    except RuntimeError as e:  # the edge server's RemoteError: one line, as any other refusal
        from LowResSegLib.inference.engines import RemoteError

        if not isinstance(e, RemoteError):
            raise
        print("lowresseg %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service stop, ``timeout``): raised in the main thread, so every ``finally`` and ``with``
    on the way out runs: temporary folders of patient data are removed, staged files deleted."""


def _end_cleanly_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` while a command runs; returns what puts the old handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return lambda: None

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
