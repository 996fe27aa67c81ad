"""The model repository refuses tampered, incomplete and unknown models with clear errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from LowResSegLib.repository.modelstore import (ModelCardError, ModelIntegrityError, ModelRepository, UnknownModelError,
                                     card_from_config, pbtxt_escape)

NAME = "elunet-jhead-16to64"


@pytest.fixture()
def repo_copy(tiny_repo, tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(tiny_repo, str(dst))
    return str(dst)


def test_valid_model_passes(repo_copy):
    repo = ModelRepository(repo_copy)
    assert repo.check(NAME) == (True, "ok")
    assert repo.onnx_path(NAME).endswith(os.path.join(NAME, "1", "model.onnx"))


def test_tampered_onnx_is_rejected(repo_copy):
    path = os.path.join(repo_copy, NAME, "1", "model.onnx")
    with open(path, "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0xFF]))
    repo = ModelRepository(repo_copy)
    with pytest.raises(ModelIntegrityError, match="integrity check.*sha256"):
        repo.onnx_path(NAME)
    ok, msg = repo.check(NAME)
    assert not ok and NAME in msg


def test_missing_card_field_is_rejected(repo_copy):
    card_path = os.path.join(repo_copy, NAME, "lowresseg.json")
    card = json.load(open(card_path))
    del card["normalization"]
    json.dump(card, open(card_path, "w"))
    with pytest.raises(ModelCardError, match="missing required field.*normalization"):
        ModelRepository(repo_copy).card(NAME)


def test_card_and_config_must_agree(repo_copy):
    card_path = os.path.join(repo_copy, NAME, "lowresseg.json")
    card = json.load(open(card_path))
    card["output_size"] = 128
    json.dump(card, open(card_path, "w"))
    with pytest.raises(ModelCardError, match="differs"):
        ModelRepository(repo_copy).card(NAME)


def test_unknown_model_is_rejected(repo_copy):
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*available: %s" % NAME):
        ModelRepository(repo_copy).card("nope")


def test_pbtxt_card_round_trip():
    card = {"name": 'a "quoted" \\ name', "text": "line\nbreak"}
    cfg = 'parameters {\n  key: "lowresseg"\n  value: { string_value: "%s" }\n}\n' % pbtxt_escape(json.dumps(card))
    assert card_from_config(cfg) == card


def test_cli_models_lists_and_flags(repo_copy):
    run = lambda: subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli", "models", "--repository", repo_copy],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    res = run()
    assert res.returncode == 0, res.stdout
    line = [l for l in res.stdout.splitlines() if l.startswith(NAME)][0]
    assert "16²" in line and "64²" in line and " 52 " in line and line.rstrip().endswith("ok")
    with open(os.path.join(repo_copy, NAME, "1", "model.onnx"), "ab") as f:
        f.write(b"x")
    res = run()
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "integrity check" in res.stdout


# Code meanings of Slicer's terminology (Modules/Loadable/Terminologies/Resources/
# SegmentationCategoryTypeModifier-DICOM-Master.json, v5.8.1) and dcmqi: a card that spells them
# otherwise shows a second, unmatched entry in Slicer and writes that spelling into the DICOM-SEG.
DICOM_MASTER_MEANINGS = {("SCT", "49755003"): "Morphologically Altered Structure", ("SCT", "108369006"): "Neoplasm"}


def test_shipped_cards_and_the_exporter_use_the_dicom_master_list_meanings(tiny_repo):
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Models")
    repos = [ModelRepository(root), ModelRepository(tiny_repo)]  # tiny_repo: made by the exporter
    cards = [repo.card(name) for repo in repos for name in repo.names()]
    assert len(cards) >= 6
    for card in cards:
        for cls in card["classes"]:
            for code in (cls["category"], cls["type"]):
                key = (code["scheme"], code["value"])
                assert DICOM_MASTER_MEANINGS.get(key, code["meaning"]) == code["meaning"], (card["name"], code)
