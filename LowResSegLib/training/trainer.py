"""Deep-supervised training, resumable across sessions (``--resume``).

A run directory holds ``run.json`` (the exact config and command), ``metrics.csv``
(one row per epoch), ``last.pt`` (everything needed to resume) and ``best.pt``
(the weights with the best validation Dice at the output size R). With ``--ema`` those
are the exponential moving average of the weights, which is what gets validated and kept.
"""

import copy
import csv
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from LowResSegLib.images.intensity import DEFAULT_METHOD
from LowResSegLib.training.cache import default_cache_dir
from LowResSegLib.training.models import SegModel, model_stats
from LowResSegLib.training.slices import DEFAULT_AUGMENTATION, SliceCache, augmentation_plan, make_batch


def deep_supervision_loss(outputs, targets):
    """Mean over scales of BCE + soft Dice, each against the HR truth resized to that scale."""
    total = 0.0
    for logits, target in zip(outputs, targets):
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).sum()
        dice = 1 - (2 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
        total = total + bce + dice
    return total / len(outputs)


class TrainingBatches(object):
    """The augmented batches of one epoch, made in ``workers`` processes (0: in this one).

    Each batch draws its augmentation from its own generator, seeded by (seed, epoch, batch),
    so a run gives the same batches whatever the number of workers. Workers are forked before
    the model touches a GPU and only ever run numpy.
    """

    def __init__(self, cache, input_size, scales, crop, workers, augment=DEFAULT_AUGMENTATION):
        self.args = (cache, input_size, scales, crop, augment, False)
        self.pool = None
        if workers > 0:
            import multiprocessing

            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = ctx.Pool(workers, initializer=_set_worker_args, initargs=self.args)

    def epoch(self, rows, batch_size, seed, epoch):
        tasks = [(rows[b:b + batch_size], (seed, epoch, b // batch_size)) for b in range(0, len(rows), batch_size)]
        if self.pool is None:
            return (_make_training_batch(t, self.args) for t in tasks)
        return self.pool.imap(_pool_batch, tasks)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


_WORKER_ARGS = None


def _set_worker_args(*args):
    global _WORKER_ARGS
    _WORKER_ARGS = args


def _pool_batch(task):
    return _make_training_batch(task, _WORKER_ARGS)


def _make_training_batch(task, args):
    rows, seed = task
    cache, input_size, scales, crop, augment, one_by_one = args
    return make_batch(cache, rows, input_size, scales, rng=np.random.default_rng(list(seed)), crop=crop,
                      augment=augment, one_by_one=one_by_one)


def blas_pinned(threads=1):
    """A context that holds numpy's BLAS to ``threads`` threads (threadpoolctl).

    Why: after the resampling products numpy's second BLAS thread keeps spinning and fights
    torch's threads for the two cores; pinning it took an epoch from 24.4 to 18.2 s (issue 28).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


PRECISIONS = ("fp32", "bf16")


class StepRunner(object):
    """One optimiser step on one batch: forward (fp32, or bfloat16 autocast), deep-supervised loss
    in fp32, backward, Adam. The trainer and ``bench/train_speed.py`` run the same code."""

    def __init__(self, model, cache, lr=1e-3, precision="fp32", pin_blas=True, scales=None,
                 augment=DEFAULT_AUGMENTATION, crop=None, device=None, one_by_one=False):
        import contextlib

        if precision not in PRECISIONS:
            raise ValueError("--precision is one of %s, not %r" % (", ".join(PRECISIONS), precision))
        self.model = model
        self.device = device or torch.device("cpu")
        self.precision = precision
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.args = (cache, model.config["input_size"], scales or model.scales(), crop, augment, one_by_one)
        self.pinned = blas_pinned if pin_blas else contextlib.nullcontext

    def train_on(self, x, ys):
        """One step on a made batch; returns the loss."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            outs = self.model(torch.from_numpy(x).to(self.device))
        loss = deep_supervision_loss([o.float() for o in outs], [torch.from_numpy(y).to(self.device) for y in ys])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def step(self, rows, seed):
        """Make the augmented batch of ``rows`` (seeded by ``seed``) and train on it."""
        return self.train_on(*_make_training_batch((rows, seed), self.args))


class WeightAverage(object):
    """Exponential moving average of a model's weights and BatchNorm statistics.

    Why: with ~12 validation cases the best-epoch choice of raw weights is noisy (seeds kept
    epochs 5-23 of 24); averaged weights move smoothly, so the checkpoint kept depends less
    on one lucky or unlucky epoch. The decay warms up as (1 + step) / (10 + step).
    """

    def __init__(self, model, decay):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError("--ema is a decay per batch between 0 and 1 (e.g. 0.998), not %r" % decay)
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.steps = 0

    @torch.no_grad()
    def update(self, model):
        self.steps += 1
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        avg = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                avg[name].mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                avg[name].copy_(value)

    def state_dict(self):
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])


def _device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def evaluate(model, cache, rows, input_size, scales, device, batch_size=32):
    """Validation loss and pooled Dice at the output size (threshold 0.5)."""
    model.eval()
    inter = psum = tsum = 0.0
    losses = []
    for b in range(0, len(rows), batch_size):
        x, ys = make_batch(cache, rows[b:b + batch_size], input_size, scales)
        outs = model(torch.from_numpy(x).to(device))
        ys_t = [torch.from_numpy(y).to(device) for y in ys]
        losses.append(float(deep_supervision_loss(outs, ys_t)) * len(x))
        pred = outs[-1] > 0
        truth = ys_t[-1] > 0.5
        inter += float((pred & truth).sum())
        psum += float(pred.sum())
        tsum += float(truth.sum())
    dice = 1.0 if psum + tsum == 0 else 2 * inter / (psum + tsum)
    return sum(losses) / max(1, len(rows)), dice


def train(cfg, progress=True):
    """Train (or resume) one model. ``cfg`` keys mirror ``lowresseg train`` options."""
    out = cfg["out"]
    os.makedirs(out, exist_ok=True)
    cfg = dict(cfg, normalization=DEFAULT_METHOD)  # what the slice cache is made with; export writes it to the card
    torch.manual_seed(cfg["seed"])
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = _device(cfg.get("device", "auto"))
    model = SegModel(cfg["backbone"], cfg["head"], cfg["input_size"], cfg["output_size"],
                     classes=1, width=cfg["width"])
    r = model.config["input_size"]
    scales = model.scales()
    augment = cfg.setdefault("augment", DEFAULT_AUGMENTATION)
    augmentation_plan(augment)  # an unknown name fails before the slice cache is built
    if cfg.get("crop") and cfg["head"] != "full":
        raise ValueError("--crop is for full-resolution models (--head full) only")

    cache_dir = cfg.get("cache_dir") or default_cache_dir()
    data = SliceCache.build(cfg["data"], cache_dir, cfg.get("modality", "FLAIR"), cfg.get("label", "wt"), progress)
    train_set, val_set = data.split(cfg["val_fraction"], seed=cfg["seed"])
    val_rows = val_set.sample(np.random.default_rng(1234), cfg["neg_ratio"])
    if cfg.get("max_val_slices"):
        val_rows = val_rows[: cfg["max_val_slices"]]
    batches = TrainingBatches(train_set, r, scales, cfg.get("crop"), cfg.get("workers") or 0, augment)
    runner = StepRunner(model.to(device), train_set, lr=cfg["lr"],
                        precision=cfg.setdefault("precision", "fp32"), scales=scales, augment=augment,
                        crop=cfg.get("crop"), device=device)
    try:
        with runner.pinned():
            return _train_loop(cfg, runner, r, scales, device, train_set, val_set, val_rows, batches, progress)
    finally:
        batches.close()


def _train_loop(cfg, runner, r, scales, device, train_set, val_set, val_rows, batches, progress):
    from tqdm import tqdm

    out = cfg["out"]
    model, opt = runner.model, runner.opt
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"], eta_min=cfg["lr"] * 0.02)

    ema = WeightAverage(model, cfg["ema"]) if cfg.get("ema") else None
    state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "train_seconds": 0.0}
    last = os.path.join(out, "last.pt")
    if cfg.get("resume") and os.path.exists(last):
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        if ema is not None:
            if "ema" not in ck:
                raise ValueError("%s was trained without --ema; resume it without --ema or start a new run" % out)
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        torch.set_rng_state(ck["torch_rng"])
    elif os.path.exists(last):
        raise FileExistsError("%s already holds a run; pass --resume to continue it or choose another --out" % out)

    run_info = {
        "name": model.name, "config": model.config, "scales": scales,
        "train_cfg": {k: v for k, v in cfg.items() if k not in ("resume",)},
        "command": cfg.get("command") or " ".join(shlex.quote(a) for a in ["lowresseg"] + sys.argv[1:]),
        "train_cases": len(train_set.case_ids), "val_cases": len(val_set.case_ids),
        "val_slices": int(len(val_rows)), "device": str(device), **model_stats(model),
    }
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(run_info, f, indent=2)

    metrics_path = os.path.join(out, "metrics.csv")
    new_csv = not os.path.exists(metrics_path) or state["epoch"] == 0
    if new_csv:
        with open(metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "lr", "train_loss", "val_loss", "val_dice", "seconds"])

    bad_epochs = state["epoch"] - state["best_epoch"]
    last_epoch = min(cfg["epochs"], cfg.get("stop_after") or cfg["epochs"])
    while state["epoch"] < last_epoch and bad_epochs < cfg["patience"]:
        epoch = state["epoch"] + 1
        rng = np.random.default_rng([cfg["seed"], epoch])
        rows = train_set.sample(rng, cfg["neg_ratio"])
        if cfg.get("max_slices"):
            rows = rows[: cfg["max_slices"]]
        model.train()
        t0 = time.time()
        losses = []
        bar = tqdm(batches.epoch(rows, cfg["batch_size"], cfg["seed"], epoch), total=-(-len(rows) // cfg["batch_size"]),
                   desc="%s epoch %d/%d" % (model.name, epoch, cfg["epochs"]), unit="batch", disable=not progress,
                   leave=False)
        for x, ys in bar:
            losses.append(runner.train_on(x, ys))
            if ema is not None:
                ema.update(model)
            bar.set_postfix(loss="%.4f" % np.mean(losses[-20:]))
        lr = opt.param_groups[0]["lr"]
        sched.step()
        kept = model if ema is None else ema.model  # the weights that are validated and saved as best.pt
        val_loss, val_dice = evaluate(kept, val_set, val_rows, r, scales, device)
        seconds = time.time() - t0
        state["epoch"] = epoch
        state["train_seconds"] += seconds
        if val_dice > state["best_dice"]:
            state.update(best_dice=val_dice, best_epoch=epoch)
            torch.save({"model": kept.state_dict(), "config": model.config, "epoch": epoch,
                        "val_dice": val_dice}, os.path.join(out, "best.pt"))
        bad_epochs = epoch - state["best_epoch"]
        with open(metrics_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch, "%.6g" % lr, "%.5f" % np.mean(losses), "%.5f" % val_loss,
                                    "%.5f" % val_dice, "%.1f" % seconds])
        tmp = last + ".part"
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "state": state, "torch_rng": torch.get_rng_state()}
        if ema is not None:
            ck["ema"] = ema.state_dict()
        torch.save(ck, tmp)
        os.replace(tmp, last)
        if progress:
            print("%s epoch %d: train %.4f  val loss %.4f  val Dice@%d %.4f  (%.0f s)%s" % (
                model.name, epoch, np.mean(losses), val_loss, scales[-1], val_dice, seconds,
                "  *best" if state["best_epoch"] == epoch else ""), flush=True)
    if bad_epochs >= cfg["patience"]:
        state["stopped"] = "early stop"
    elif state["epoch"] < cfg["epochs"]:
        state["stopped"] = "stopped after epoch %d of %d (--stop-after); --resume continues it" % (
            state["epoch"], cfg["epochs"])
    else:
        state["stopped"] = "epochs done"
    with open(os.path.join(out, "state.json"), "w") as f:
        json.dump(state, f, indent=2)
    return state
