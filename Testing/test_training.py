"""Deep-supervision loss and the train/export command line (errors and a real tiny run)."""

import json
import os

import pytest
import torch

from LowResSegLib.frontends.cli import main
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


def test_training_batches_do_not_depend_on_the_number_of_workers():
    """Worker processes make exactly the batches the training process would: a GPU run with
    --workers 6 is the same recipe as a CPU run without."""
    import numpy as np

    from LowResSegLib.training.slices import SliceCache
    from LowResSegLib.training.trainer import TrainingBatches

    rng = np.random.default_rng(3)
    images = [rng.normal(1, 0.2, (5, 48, 48)).astype(np.float16) for _ in range(3)]
    labels = [(rng.random((5, 48, 48)) > 0.7).astype(np.uint8) * 255 for _ in range(3)]
    cache = SliceCache(images, labels, ["a", "b", "c"])
    rows = cache.sample(np.random.default_rng(0), 1.0)
    made = []
    for workers in (0, 2):
        batches = TrainingBatches(cache, 16, [16, 32, 48], None, workers)
        try:
            made.append(list(batches.epoch(rows, 4, seed=5, epoch=2)))
        finally:
            batches.close()
    serial, pooled = made
    assert len(serial) == len(pooled) == -(-len(rows) // 4)
    for (x0, ys0), (x1, ys1) in zip(serial, pooled):
        np.testing.assert_array_equal(x0, x1)
        for a, b in zip(ys0, ys1):
            np.testing.assert_array_equal(a, b)
    # and the augmentation does differ between batches and epochs (it is not switched off)
    other = TrainingBatches(cache, 16, [16, 32, 48], None, 0)
    again = list(other.epoch(rows, 4, seed=5, epoch=3))
    assert not np.array_equal(serial[0][0], again[0][0])


def test_weight_average_follows_the_weights_and_copies_counters():
    from LowResSegLib.training.models import SegModel
    from LowResSegLib.training.trainer import WeightAverage

    model = SegModel("elunet", "jhead", 16, 64, classes=1, width=2)
    avg = WeightAverage(model, 0.9)
    before = {k: v.clone() for k, v in avg.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model(torch.zeros(2, 1, 16, 16))  # train mode: BatchNorm statistics and counters move
    avg.update(model)
    d = min(0.9, 2.0 / 11.0)  # warm-up of the first step
    now, raw = avg.model.state_dict(), model.state_dict()
    name = next(n for n, _ in model.named_parameters())
    torch.testing.assert_close(now[name], d * before[name] + (1 - d) * raw[name])
    counters = [n for n, v in raw.items() if not v.dtype.is_floating_point]
    assert counters and all(torch.equal(now[n], raw[n]) for n in counters)
    assert not any(p.requires_grad for p in avg.model.parameters())
    with pytest.raises(ValueError, match="--ema"):
        WeightAverage(model, 1.0)


def test_ema_run_keeps_the_averaged_weights_and_resumes(tiny_run, tmp_path):
    """best.pt holds the average (not the raw weights); --resume continues it, and a run made
    without --ema cannot silently be resumed as one. The card records --ema and --augment."""
    from LowResSegLib.training.trainer import train

    with pytest.raises(ValueError, match="unknown augmentation"):
        train(dict(tiny_run[1], out=str(tmp_path / "bad"), augment="bogus"), progress=False)
    assert not os.path.exists(str(tmp_path / "bad" / "last.pt"))
    cfg = dict(tiny_run[1], out=str(tmp_path / "ema"), ema=0.9, epochs=1, patience=5, augment="context")
    train(cfg, progress=False)
    last = torch.load(str(tmp_path / "ema" / "last.pt"), weights_only=False)
    best = torch.load(str(tmp_path / "ema" / "best.pt"), weights_only=False)
    name = next(k for k, v in best["model"].items() if v.dtype.is_floating_point and v.dim() == 4)
    assert torch.equal(best["model"][name], last["ema"]["model"][name])
    assert not torch.equal(best["model"][name], last["model"][name])
    state = train(dict(cfg, epochs=2, resume=True), progress=False)
    assert state["epoch"] == 2
    assert torch.load(str(tmp_path / "ema" / "last.pt"), weights_only=False)["ema"]["steps"] > last["ema"]["steps"]
    from LowResSegLib.training.export import export_run

    card_dir = export_run(str(tmp_path / "ema"), str(tmp_path / "repo"))
    with open(os.path.join(str(card_dir), "lowresseg.json")) as f:
        training = json.load(f)["training"]
    assert "moving average, decay 0.9 per batch" in training["optimizer"]
    assert training["augmentation"] == "context"
    with pytest.raises(ValueError, match="without --ema"):
        train(dict(tiny_run[1], ema=0.9, epochs=2, resume=True, out=tiny_run[0]), progress=False)
