"""``spine-ssl detect-train DATA --out MODEL``: train the vertebra detector on labelled scans."""

NAME = "detect-train"
HELP = "train the vertebra detector / level labeller on scans with known levels"
DESCRIPTION = (
    "Train the automatic vertebra detector (MONAI 2D U-Net on 2.5D sagittal slices + anatomical "
    "level assignment) on every scan under DATA whose levels are found in --levels (truth JSON, "
    "Slicer .mrk.json, label maps named by SeriesInstanceUID or image stem; for a synthetic "
    "cohort DATA/truth is used) and/or on --randomised N domain-randomised synthetic scans "
    "(made once and cached in MODEL/randomised).  Subjects are split into train / validation / "
    "test; the best model is evaluated on the held-out test subjects (MODEL/evaluation.json + "
    ".png).  With --calibrate N the confidence is calibrated on N further randomised scans.")


def add_arguments(parser):
    parser.add_argument("data", nargs="?", help="folder of scans (DICOM series and/or NIfTI/NRRD/MHA images); "
                                                 "optional with --randomised")
    parser.add_argument("--out", required=True, help="model folder to write (best/, last/, log.csv, evaluation)")
    parser.add_argument("--levels", help="folder of level files (default: DATA/truth when it exists)")
    parser.add_argument("--label-mapping", help="label-map values -> levels: 'spider' or a JSON/CSV mapping file")
    parser.add_argument("--preset", default="default", help="network size: default | compact (the v1 network) | tiny (tests)")
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (default 40)")
    parser.add_argument("--samples-per-epoch", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--canvas", type=int, nargs="+", default=[128],
                        help="training crop size in 2 mm pixels: SIZE or ROWS COLUMNS (default 128)")
    parser.add_argument("--randomised", type=int, default=0, metavar="N",
                        help="also train on N domain-randomised synthetic scans (cached in MODEL/randomised)")
    parser.add_argument("--randomised-val", type=int, default=0, metavar="N",
                        help="N more randomised scans (another seed) for the validation loss")
    parser.add_argument("--randomised-seed", type=int, default=1000, help="seed of the randomised scans")
    parser.add_argument("--randomised-fraction", type=float, default=0.5,
                        help="share of samples from randomised scans when DATA is also given (default 0.5)")
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="fit the confidence calibration on N randomised scans (seed --randomised-seed + 2) "
                             "after training (MODEL/best/calibration.json, report in MODEL/calibration)")
    parser.add_argument("--calibrate-only", type=int, default=0, metavar="N",
                        help="do not train: fit the calibration of --model on N randomised scans")
    parser.add_argument("--sigma-lateral", type=float, default=8.0,
                        help="fall-off (mm) of the centre map across slices (default 8)")
    parser.add_argument("--lr", type=float, default=0.3, help="SGD learning rate (default 0.3)")
    parser.add_argument("--patience", type=int, default=3, help="epochs without improvement before lowering the lr")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--resume", action="store_true", help="continue from MODEL/last")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="fine-tune: start from this detector model folder ('bundled': the bundled model) "
                             "with its architecture instead of --preset; classes it lacks start from their "
                             "anatomical neighbour's weights")
    parser.add_argument("--name", default=None, help="model name recorded in the model file")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: evaluate --model on the held-out test subjects of this split "
                             "(same --val-fraction / --test-fraction / --seed) into OUT/evaluation.json + .png")
    parser.add_argument("--model", default=None,
                        help="with --evaluate-only: the model folder to evaluate (default: the bundled model)")


def run(args) -> int:
    import os
    from pathlib import Path

    from .. import atomic
    from ..errors import ConfigError, SpineSSLError
    from ..levels import resolve_label_mapping
    from ..progress import track
    from ..train import TrainConfig
    from ..detect import cases as C
    from ..detect.model import PRESETS, DetectorConfig, load_detector
    from ..detect.training import DetectTrainConfig, train_detector

    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if not 0 <= args.val_fraction < 1 or not 0 <= args.test_fraction < 1:
        raise ConfigError("--val-fraction and --test-fraction must be in [0, 1)")
    if args.model and not (args.evaluate_only or args.calibrate_only):
        raise ConfigError("--model is only used with --evaluate-only or --calibrate-only")
    if args.evaluate_only and args.test_fraction <= 0:
        raise ConfigError("--evaluate-only needs held-out test subjects (--test-fraction > 0)")
    if args.calibrate_only > 0:
        from ..detect.calibrate import calibrate_model

        if not args.model:
            raise ConfigError("--calibrate-only needs --model")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        cal = calibrate_model(args.model, Path(args.out) / "randomised", args.randomised_seed + 2, args.calibrate_only,
                              workers=max(1, args.workers), report=Path(args.out) / "calibration")
        print(f"calibration fitted on {cal.info.get('n_levels')} levels ({cal.info.get('n_wrong')} wrong): ECE "
              f"{cal.info.get('ece_uncalibrated'):.3f} uncalibrated -> {cal.info.get('ece_fitted'):.3f}")
        return 0
    if args.data is None and (args.randomised <= 0 or args.evaluate_only):
        raise ConfigError("give DATA (scans with known levels) or --randomised N")
    if len(args.canvas) not in (1, 2):
        raise ConfigError("--canvas takes SIZE or ROWS COLUMNS")
    out = Path(args.out)
    mapping = resolve_label_mapping(args.label_mapping) if args.label_mapping else None
    split = {"train": [], "val": [], "test": []}
    if args.data is not None:
        levels_dir = args.levels or (os.path.join(args.data, "truth")
                                     if os.path.isdir(os.path.join(args.data, "truth")) else None)
        if levels_dir is None:
            raise ConfigError("no --levels folder given and DATA/truth does not exist")
        refs = [r for r in C.discover(args.data, levels_dir) if r.levels_file is not None]
        if not refs:
            raise SpineSSLError(f"no scans with level files found (levels folder {levels_dir})", args.data)
        split = C.split_groups(refs, args.val_fraction, args.test_fraction, args.seed)
        atomic.write_json(out / "split.json", {k: [r.key for r in v] for k, v in split.items()})
    if args.evaluate_only:
        import torch

        from ..train import select_device

        if args.threads:
            torch.set_num_threads(args.threads)
        errs = _evaluate(load_detector(args.model, device=str(select_device(args.device))), split, mapping, out)
        if errs:
            atomic.write_csv(out / "errors.csv", errs)
        return 1 if errs else 0

    loaded, errors = {"train": [], "val": []}, []
    for part in ("train", "val"):
        for ref in track(split[part], desc=f"reading {part} scans", unit="scan"):
            try:
                case = C.load_case(ref, mapping)
                if not case.levels or len(case.levels) == 0:
                    raise SpineSSLError("level file holds no levels", ref.levels_file)
                loaded[part].append(case)
            except SpineSSLError as e:
                errors.append({"scan": ref.key, "stage": f"detect-train/{part}", "error": type(e).__name__,
                               "message": e.cause})
                print(f"skipped: {e}")
    if args.init:
        from ..detect.model import architecture_of

        cfg = DetectorConfig(**architecture_of(args.init), sigma_lateral_mm=args.sigma_lateral)
    else:
        cfg = DetectorConfig(**PRESETS[args.preset], sigma_lateral_mm=args.sigma_lateral)
    canvas = args.canvas[0] if len(args.canvas) == 1 else tuple(args.canvas)
    tcfg = DetectTrainConfig(samples_per_epoch=args.samples_per_epoch, seed=args.seed, canvas_px=canvas,
                             randomised_fraction=args.randomised_fraction if args.data else 1.0)
    r_train, r_val = [], []
    if args.randomised > 0:
        from ..detect.randomised.cases import build_cases

        workers = max(1, args.workers)
        r_train = build_cases(out / "randomised", args.randomised_seed, args.randomised, cfg.spacing_mm,
                              cfg.multiple, workers=workers, desc="randomised training scans")
        if args.randomised_val > 0:
            r_val = build_cases(out / "randomised", args.randomised_seed + 1, args.randomised_val, cfg.spacing_mm,
                                cfg.multiple, workers=workers, desc="randomised validation scans")
    tc = TrainConfig(lr=args.lr, momentum=0.9, weight_decay=1e-4, batch_size=args.batch_size,
                     max_epochs=args.epochs, patience=args.patience, max_lr_drops=2, amp=args.amp,
                     device=args.device, num_workers=args.workers, seed=args.seed, grad_clip=5.0)
    trained_on = [os.path.basename(os.path.abspath(args.data))] if args.data else []
    if r_train:
        trained_on.append(f"randomised:{args.randomised}@seed{args.randomised_seed}")
    res = train_detector(loaded["train"], loaded["val"], out, cfg, tcfg, tc, resume=args.resume,
                         num_threads=args.threads, randomised_train=r_train, randomised_val=r_val,
                         init=args.init,
                         extra={"name": args.name or out.name, "preset": None if args.init else args.preset,
                                "trained_on": " + ".join(trained_on)})
    f = res.fit
    print(f"trained {f.epochs_run} epoch(s) on {res.n_train} scans + {len(r_train)} randomised "
          f"({res.n_val} + {len(r_val)} validation); best epoch {f.best_epoch}, validation loss "
          f"{f.best_val_loss:.4f}; stop: {f.stop_reason}")
    if args.calibrate > 0:
        from ..detect.calibrate import calibrate_model

        try:
            calibrate_model(out / "best", out / "randomised", args.randomised_seed + 2, args.calibrate,
                            workers=max(1, args.workers), report=out / "calibration")
        except SpineSSLError as e:  # the trained model stays; it is just not calibrated
            errors.append({"scan": "", "stage": "detect-train/calibrate", "error": type(e).__name__,
                           "message": e.cause})
            print(f"calibration skipped: {e.cause}")
    if split["test"]:
        errors += _evaluate(load_detector(out), split, mapping, out)
    if errors:
        atomic.write_csv(out / "errors.csv", errors)
        return 1
    return 0


def _evaluate(det, split, mapping, out) -> list[dict]:
    """Evaluate ``det`` on the held-out test subjects: OUT/evaluation.json + .png (and
    OUT/errors.csv when scans could not be read); returns the error rows."""
    from ..detect.evaluate import evaluate_cases, write_report
    from .detect import _pct

    summary, errs = evaluate_cases(det, split["test"], mapping, desc="evaluating held-out scans")
    example = summary.pop("_example")
    summary["split"] = {k: len(v) for k, v in split.items()}
    summary["model"] = det.meta.get("config", {}).get("name") or det.path.name
    write_report(summary, out / "evaluation.json", out / "evaluation.png", example)
    rows = [{"scan": "", "stage": "detect-train/test", "error": "SpineSSLError", "message": m} for m in errs]
    cm = summary["centroid_mm"]["mean"]
    print(f"held-out: {summary['n_scans']} scans, mean centroid error "
          f"{'n/a' if cm is None else f'{cm:.2f}'} mm, labelling accuracy "
          f"{_pct(summary['labelling_accuracy'])}, all levels right in {_pct(summary['scans_all_correct'])} of scans "
          f"-> {out / 'evaluation.json'}")
    return rows
