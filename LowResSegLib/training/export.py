"""Run directory -> Triton-layout model folder (ONNX opset 13 + model card).

The ONNX graph takes ``image`` [N,1,r,r] float32 and returns ``modelstore.graph_outputs``
(``labels`` [N,R,R] bool, ``probabilities`` [N,K,R,R] float32 and ``probabilities_8bit``
[N,K,R,R] float16), with a dynamic batch axis. Opset 13, the op set and the tensor types are
what TensorRT 8.2 (JetPack 4.6, Jetson Nano) parses (``tensorrt_ops.check_tensorrt82``).
"""

import csv
import json
import os
import re

import torch

from LowResSegLib import __version__
from LowResSegLib.images.intensity import ZSCORE_NONZERO, normalization_card
from LowResSegLib.repository.modelstore import (CARD_FILE, CARD_FORMAT_VERSION, CONFIG_FILE, LABELS, ONNX_RELPATH, PROBABILITIES,
                                     PROBABILITIES_8BIT, sha256_file, triton_config, validate_card)
from LowResSegLib.results.outputs import staged_folder
from LowResSegLib.training.models import ExportWrapper, SegModel, model_stats
from LowResSegLib.training.phantom import MNI_NOTICE

OPSET = 13
TUMOUR_CLASS = {
    "index": 1,
    "name": "Tumour",
    "label": "whole tumour (core, necrosis and edema)",
    "color": [230, 60, 40],
    "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
    "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
}


def export_onnx(model, path, opset=OPSET):
    """Export ``model`` (a SegModel) with the outputs of ``graph_outputs`` and a dynamic batch."""
    model = model.eval()
    r = model.config["input_size"]
    wrapper = ExportWrapper(model).eval()
    names = [LABELS, PROBABILITIES, PROBABILITIES_8BIT]
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (torch.zeros(2, 1, r, r),), path, opset_version=opset, dynamo=False,
            input_names=["image"], output_names=names,
            dynamic_axes=dict({"image": {0: "batch"}}, **{n: {0: "batch"} for n in names}),
        )
    return path


def _val_dice_of_epoch(run_dir, epoch):
    """The validation-split Dice that metrics.csv records for ``epoch`` (the weights ``final`` exports)."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        for row in csv.DictReader(f):
            if int(row["epoch"]) == int(epoch):
                return float(row["val_dice"])
    raise ValueError("%s/metrics.csv has no row for epoch %d; the run folder is incomplete" % (run_dir, epoch))


def load_run(run_dir, checkpoint="best.pt"):
    """A run's model at ``checkpoint``: ``best.pt`` (the epoch of highest validation-split Dice), ``final`` (the
    weights the last epoch kept: the moving average when the run used ``--ema``, as ``best.pt`` holds it), or a
    file name in the run folder.

    Why ``final``: the validation split is mostly repeated slices of the training sources, and on real patients
    its best epoch can be an early, under-trained one (docs/method.md, issue 28)."""
    with open(os.path.join(run_dir, "run.json")) as f:
        info = json.load(f)
    if checkpoint == "best":
        checkpoint = "best.pt"
    if checkpoint == "final":
        last = torch.load(os.path.join(run_dir, "last.pt"), map_location="cpu", weights_only=False)
        ck = {"model": last["ema"]["model"] if "ema" in last else last["model"], "config": info["config"],
              "epoch": last["state"]["epoch"], "weights": "final",
              "val_dice": _val_dice_of_epoch(run_dir, last["state"]["epoch"])}
    else:
        ck = torch.load(os.path.join(run_dir, checkpoint), map_location="cpu", weights_only=False)
        ck.setdefault("weights", "best validation-split Dice" if checkpoint == "best.pt" else checkpoint)
    c = ck["config"]
    model = SegModel(c["backbone"], c["head"], c["input_size"], c["output_size"], c["classes"], c["width"])
    model.load_state_dict(ck["model"])
    return model.eval(), info, ck


def real_cases_of(spec):
    """The real cases a data spec trained on, each with its source (repository, commit, paths)."""
    from LowResSegLib.training.realdata import manifest_cases
    from LowResSegLib.training.slices import parse_data_specs, parse_data_spec

    out = []
    for part, times in parse_data_specs(spec):
        d = parse_data_spec(part)
        if d["kind"] == "real":
            out += [{"case": c["case"], "repository": c["repository"], "commit": c["commit"],
                     "image": c["image_path"], "label": c["label_path"], "origin": c["origin"], "repeat": times}
                    for c in manifest_cases(d["split"])]
        elif d["kind"] == "lgg":
            out += [dict(p, repeat=times) for p in _lgg_patients_of(d)]
    return out


def _lgg_patients_of(d):
    """The LGG patients of a parsed ``lgg:`` spec: the manifest's (with their source), or a folder's."""
    from LowResSegLib.training import kaggle3m

    if "split" in d:
        from LowResSegLib.training.lggdata import lgg_manifest, lgg_patients

        m = lgg_manifest()
        return [{"case": p["patient"], "repository": m["repository"], "commit": m["commit"],
                 "image": "%s/%s/%s_<n>.tif (n = 1..%d, channel %d)" % (m["folder"], p["patient"], p["patient"],
                                                                        p["slices"], kaggle3m.FLAIR_CHANNEL),
                 "label": "%s/%s/%s_<n>_mask.tif" % (m["folder"], p["patient"], p["patient"]),
                 "sha256": p["sha256"], "origin": "TCGA-LGG, LGG segmentation set of Buda et al. 2019 (kaggle_3m)"}
                for p in lgg_patients(d["split"])]
    return [{"case": os.path.basename(f), "path": f, "origin": "a kaggle_3m folder (LGG segmentation set layout)"}
            for f in kaggle3m.patient_folders(d["path"])]


def data_notice(spec):
    text = "Trained on synthetic phantoms derived from the MNI152 2009a template. " + MNI_NOTICE
    if real_cases_of(spec):
        text += (" Also trained on the real cases listed in training.real_cases, each with its origin (BraTS, "
                 "TCIA or the TCGA-LGG set of Buda et al. 2019: not redistributed; see LowResSegLib/training/real_manifest.json for their sources and "
                 "terms).")
    return text


def build_card(model, info, ck, sha256, metrics=None):
    c = model.config
    state = {}
    state_path = info.get("_state_path")
    if state_path and os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    tc = info["train_cfg"]
    card = {
        "format_version": CARD_FORMAT_VERSION,
        "name": model.name,
        "version": "1.0.0",
        "lowresseg_version": __version__,
        "task": "brain tumour segmentation (whole tumour) on axial MRI slices",
        "modality": "MR",
        "sequence": "FLAIR (skull-stripped or a raw head with skull, scalp and a noisy background)",
        "orientation": "axial; slices in canonical LPS order (i: L, j: P), square FOV by zero padding",
        "input_size": c["input_size"],
        "output_size": c["output_size"],
        "input_resampling": "area (box) average of the square slice to input_size (LowResSegLib.images.geometry.area_resample)",
        "classes": [dict(TUMOUR_CLASS)],
        "normalization": normalization_card(tc.get("normalization", ZSCORE_NONZERO)),
        "backbone": {"name": c["backbone"], "width": c["width"]},
        "head": c["head"],
        "deep_supervision_scales": info.get("scales"),
        "params": model_stats(model)["params"],
        "macs": model_stats(model)["macs"],
        "training": {
            "data": tc["data"], "real_cases": real_cases_of(tc["data"]),
            "command": info["command"], "seed": tc["seed"],
            "epochs": int(ck.get("epoch", 0)), "epochs_run": state.get("epoch"), "weights_kept": ck.get("weights"),
            "epochs_planned": tc["epochs"], "stopped": state.get("stopped"),
            "train_seconds": round(state.get("train_seconds", 0.0), 1),
            "device": info.get("device"), "train_cases": info.get("train_cases"), "val_cases": info.get("val_cases"),
            "augmentation": tc.get("augment", "standard"),
            "crop": tc.get("crop") or None,  # full-resolution models: trained on random crops of this size
            "precision": tc.get("precision", "fp32"),
            "loss": "mean over head scales of BCE + soft Dice vs. the HR label area-resampled to each scale",
            "optimizer": "Adam lr %g, cosine schedule, batch %d%s" % (
                tc["lr"], tc["batch_size"],
                "; weights kept: exponential moving average, decay %g per batch" % tc["ema"] if tc.get("ema") else ""),
        },
        "metrics": dict({"val_dice_at_output_size": round(float(ck.get("val_dice", float("nan"))), 4)},
                        **(metrics or {})),
        "sha256": sha256,
        "intended_use": "research use, not for diagnosis",
        "data_notice": data_notice(tc["data"]),
    }
    return validate_card(card)


def export_run(run_dir, repo_dir, overwrite=False, checkpoint="best.pt", calibrate=True, name=None):
    """Write ``<repo_dir>/<model name>/`` atomically; refuse to replace one unless ``overwrite``.

    ``name``: the model's name in the repository (default: from its configuration, e.g. elunet-jhead-32to256);
    another name lets a second model of one configuration sit beside the first (an ensemble's member).

    ``calibrate``: choose the volume threshold on the run's validation split (``training.calibrate``)."""
    if name is not None and not re.match(r"^[a-z0-9][a-z0-9.-]*$", name):
        raise ValueError("a model name is lower-case letters, digits, '-' and '.', got %r" % name)
    model, info, ck = load_run(run_dir, checkpoint)
    info["_state_path"] = os.path.join(run_dir, "state.json")
    name = name or model.name
    final = os.path.join(repo_dir, name)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError("%s exists; pass --overwrite to replace it" % final)
    calibration = None
    if calibrate:
        from LowResSegLib.training.calibrate import calibrate_run

        calibration = calibrate_run(model, info["train_cfg"])
    with staged_folder(final) as tmp:
        onnx_path = os.path.join(tmp, ONNX_RELPATH)
        os.makedirs(os.path.dirname(onnx_path))
        export_onnx(model, onnx_path)
        card = build_card(model, info, ck, sha256_file(onnx_path))
        card["name"] = name
        if calibration:
            card["calibration"] = calibration
        write_card_files(tmp, card)
    return final


def write_card_files(folder, card):
    """lowresseg.json and config.pbtxt (which carries the same card) of one model folder."""
    with open(os.path.join(folder, CARD_FILE), "w") as f:
        json.dump(validate_card(card), f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        f.write(triton_config(card))


def replace_card(model_dir, card):
    """Swap in a new card for an exported model, the folder replaced whole (the graph is copied as it is)."""
    import shutil

    with staged_folder(model_dir) as tmp:
        os.makedirs(os.path.join(tmp, os.path.dirname(ONNX_RELPATH)))
        shutil.copy2(os.path.join(model_dir, ONNX_RELPATH), os.path.join(tmp, ONNX_RELPATH))
        write_card_files(tmp, card)
