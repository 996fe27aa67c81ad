"""The model repository refuses tampered, incomplete and unknown models with clear errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from LowResSegLib.modelstore import (ModelCardError, ModelIntegrityError, ModelRepository, UnknownModelError,
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
    run = lambda: subprocess.run([sys.executable, "-m", "LowResSegLib.cli", "models", "--repository", repo_copy],
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
