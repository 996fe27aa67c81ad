"""The README's main job on the real shipped models: `lowresseg demo` writes every promised output."""

import json
import os

from LowResSegLib.frontends.cli import main
from LowResSegLib.results.dicomseg import run_dciodvfy
from LowResSegLib.repository.modelstore import ModelRepository

SHIPPED = ["elunet-full-256", "elunet-interp-32to256", "elunet-jhead-16to256", "elunet-jhead-16to256-member",
           "elunet-jhead-32to256", "elunet-jhead-32to256-member", "elunet-jhead-64to256"]
ENSEMBLE = "elunet-ensemble-16-32-interp32"  # issue 31: a card naming three of them, no graph of its own


def test_the_shipped_models_pass_their_integrity_check():
    repo = ModelRepository()
    assert repo.graph_names() == SHIPPED and repo.names() == sorted(SHIPPED + [ENSEMBLE])
    assert repo.check(ENSEMBLE) == (True, "ok")
    for name in SHIPPED:
        assert repo.check(name) == (True, "ok"), name
        card = repo.card(name)
        assert card["backbone"] == {"name": "elunet", "width": 8}  # one backbone: a fair comparison
        assert card["training"]["command"].startswith("lowresseg train ")
        assert os.path.getsize(repo.onnx_path(name)) < 15e6


def test_demo_on_shipped_models(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    for name in SHIPPED + [ENSEMBLE]:
        assert (out / "labels" / (name + ".nii.gz")).exists()
        assert (out / "labels" / (name + ".seg.nrrd")).exists()
    table = json.loads((out / "comparison.json").read_text())
    assert sorted(r["model"] for r in table["runs"]) == sorted(SHIPPED + [ENSEMBLE])
    assert all(r["reference"] == "ground truth" for r in table["runs"])
    assert (out / "comparison.png").stat().st_size > 50000
    seg = out / "elunet-jhead-32to256.seg.dcm"
    errors, _ = run_dciodvfy(str(seg))
    assert errors == []
    assert "summary:" in stdout and "5. DICOM-SEG" in stdout and "0 errors" in stdout
