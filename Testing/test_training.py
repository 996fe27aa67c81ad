"""Deep-supervision loss and the train/export command line (errors and a real tiny run)."""

import os

import pytest
import torch

from LowResSegLib.cli import main
from LowResSegLib.training.trainer import deep_supervision_loss


def test_loss_rewards_every_scale():
    target = [torch.zeros(2, 1, s, s) for s in (8, 16, 32)]
    for t in target:
        t[:, :, : t.shape[-1] // 2] = 1.0
    good = [(t * 2 - 1) * 20 for t in target]  # confident and right at every scale
    bad_coarse = [good[0] * -1] + good[1:]  # wrong only at the coarsest scale
    assert deep_supervision_loss(good, target) < 0.01
    assert deep_supervision_loss(bad_coarse, target) > deep_supervision_loss(good, target) + 0.5


def test_loss_handles_soft_targets_and_empty_slices():
    soft = [torch.full((1, 1, 4, 4), 0.5)]
    assert torch.isfinite(deep_supervision_loss([torch.zeros(1, 1, 4, 4)], soft))
    empty = [torch.zeros(1, 1, 4, 4)]
    assert deep_supervision_loss([torch.full((1, 1, 4, 4), -20.0)], empty) < 0.01


@pytest.mark.parametrize("argv,msg", [
    (["train", "--data", "bogus"], "bad data spec"),
    (["train", "--data", "folder:/nonexistent/x"], "not found"),
    (["train", "--head", "interp", "--crop", "64", "--data", "phantom:1:5"], "--crop"),
    (["export", "/nonexistent/run"], "No such file"),
])
def test_train_and_export_errors_are_one_line(argv, msg, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowresseg %s: error:" % argv[0]) and msg in err
    assert "Traceback" not in err
    assert not os.path.exists(str(tmp_path / "run" / "last.pt"))
