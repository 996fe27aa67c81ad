"""``lowresseg`` command line: models, phantom, train, export.

Heavy imports (torch, SimpleITK) happen inside the subcommand that needs them, so
``lowresseg models`` starts fast and works without the training extra.
"""

import argparse
import shlex
import sys


def cmd_models(args):
    from LowResSegLib.modelstore import ModelRepository, ModelStoreError

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
            rows.append((name, "%d²" % card["input_size"], "%d²" % card["output_size"],
                         str(card["params"]["head"]), str(card["params"]["backbone"]),
                         "%.3f" % card["metrics"].get("val_dice_at_output_size", float("nan")),
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


def cmd_phantom(args):
    from LowResSegLib.training.phantom import write_phantoms

    paths = write_phantoms(args.outdir, args.n, args.seed)
    print("wrote %d phantom case(s) to %s (images/, labels/, NOTICE-MNI152.txt)" % (len(paths), args.outdir))
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
    from LowResSegLib.training.export import export_run
    from LowResSegLib.training.tensorrt_ops import check_tensorrt82
    import os

    path = export_run(args.run, args.repository, overwrite=args.overwrite)
    problems = check_tensorrt82(os.path.join(path, "1", "model.onnx"))
    print("exported %s" % path)
    for p in problems:
        print("warning (TensorRT 8.2): %s" % p)
    return 0


def build_parser():
    from LowResSegLib.modelstore import default_repository

    p = argparse.ArgumentParser(prog="lowresseg", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")

    m = sub.add_parser("models", help="list the shipped models and check their integrity")
    m.add_argument("--repository", default=default_repository(), help="model repository folder")
    m.set_defaults(func=cmd_models)

    ph = sub.add_parser("phantom", help="write synthetic brain-tumour FLAIR phantoms (NIfTI)")
    ph.add_argument("outdir")
    ph.add_argument("--n", type=int, default=4, help="number of cases (default 4)")
    ph.add_argument("--seed", type=int, default=0)
    ph.set_defaults(func=cmd_phantom)

    t = sub.add_parser("train", help="train a model (resumable with --resume)")
    t.add_argument("--backbone", default="elunet", choices=["elunet", "unet", "dsunet"])
    t.add_argument("--head", default="jhead", choices=["interp", "jhead", "full"])
    t.add_argument("--input-size", type=int, default=32)
    t.add_argument("--output-size", type=int, default=256)
    t.add_argument("--width", type=int, default=8, help="backbone width n (default 8)")
    t.add_argument("--data", default="phantom:40:1", help="phantom:N[:seed] | msd:PATH | folder:PATH")
    t.add_argument("--modality", default="FLAIR", help="MSD modality name or index")
    t.add_argument("--label", default="wt", help="label mapping: wt, tc, et, eq:N, in:A,B")
    t.add_argument("--val-fraction", type=float, default=0.15)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--patience", type=int, default=8, help="early stop after this many epochs without a better val Dice")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--neg-ratio", type=float, default=0.3, help="tumour-free slices per tumour slice (default 0.3)")
    t.add_argument("--max-slices", type=int, default=0, help="cap the slices per epoch (0: no cap)")
    t.add_argument("--max-val-slices", type=int, default=600, help="cap the (fixed) validation slices (0: no cap)")
    t.add_argument("--crop", type=int, default=0, help="full-resolution models: train on random crops of this size")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--cache-dir", default=None, help="slice cache (default ~/.cache/lowresseg or $LOWRESSEG_CACHE)")
    t.add_argument("--out", default=None, help="run folder (default runs/<model name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export a run to the model repository (ONNX opset 13 + model card)")
    e.add_argument("run", help="run folder written by `lowresseg train`")
    e.add_argument("--repository", default=default_repository())
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=cmd_export)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print("lowresseg %s: error: %s" % (args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
