"""The ``countclip`` command. Thin: parse the config, call the job or the library.

    countclip experiment     [--config FILE] [--seed N] [--out DIR] [field.sub=value ...]
    countclip build-dataset  --config FILE [--ray-progress] [--overwrite] [field.sub=value ...]
    countclip train          --config FILE [field.sub=value ...]
    countclip evaluate       --config FILE [field.sub=value ...]
    countclip wise-ft        --base B --finetuned F [--alpha 0,0.25,0.5,0.75,1] [--out DIR] [field.sub=value ...]
    countclip config JOB     the job's full default config as YAML, each field's docstring as a comment
    countclip export CHECKPOINT --arch countclip-tiny --out DIR [--overwrite]   the open_clip folder (local-dir:DIR)
    countclip count IMAGE... --noun dogs --model CHECKPOINT|models:/name@alias [--arch countclip-tiny]
    countclip retrieve FOLDER --query "three dogs" --model ... [--top 5]
    countclip world make-source --out DIR [--rows N] [--seed N] [--overwrite]
    countclip world make-zeroshot --out DIR [--images N] [--seed N] [--overwrite]   CLIP_benchmark's wds/ layout
    countclip world train-verifier --out DIR [--epochs N] [--images N] [--seed N]
    countclip world pretrain-base --out DIR [--seed N] [--threads N] [recipe_field=value ...]

Each command imports what it runs inside its own function: the jobs pull in Ray, torch and MLflow
(seconds of imports), which `countclip --help` or `countclip config` should not pay for.

Bad input ends in one line on stderr and exit status 2, never a traceback (``main``); an error
nobody foresaw is a bug: one line too, exit status 1, and COUNTCLIP_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from countclip.arguments import (
    MAX_MESSAGE,
    OneLineParser,
    add_config_args,
    add_model_args,
    image_side,
    positive_int,
    seed_int,
)
from countclip.config import ConfigError, commented_yaml, one_line
from countclip.environment import configure_environment

JOBS = ("build-dataset", "train", "evaluate", "experiment", "wise-ft")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="countclip", description="Teach CLIP to count.")
    commands = parser.add_subparsers(dest="command", required=True)

    exp = commands.add_parser("experiment", help="the CountWorld counting experiment: base vs control vs CountCLIP")
    add_config_args(exp)
    exp.add_argument("--seed", type=int, help="master seed (shortcut for seed=N)")
    exp.add_argument("--out", help="output folder (shortcut for out=DIR)")
    exp.add_argument("--base", help="countworld (the shipped base, default), a checkpoint, or scratch (shortcut for base=...)")
    exp.set_defaults(run=_experiment)

    build = commands.add_parser("build-dataset", help="build the verified counting dataset on Ray Data")
    add_config_args(build)
    build.add_argument("--ray-progress", action="store_true",
                       help="show Ray Data's own progress bars and INFO log (default: one [build] progress line)")
    build.add_argument("--overwrite", action="store_true",
                       help="write into an output folder holding other files (kept; shortcut for overwrite=true)")
    build.set_defaults(run=_build_dataset)

    train = commands.add_parser("train", help="fine-tune with L_clip + lambda L_count on Ray Train (FSDP)")
    add_config_args(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="CountBench, zero-shot, retrieval; log and register in MLflow")
    add_config_args(evaluate)
    evaluate.set_defaults(run=_evaluate)

    wise = commands.add_parser("wise-ft", help="WiSE-FT: counting and zero-shot of base/fine-tuned interpolations")
    add_config_args(wise)
    wise.add_argument("--base", help="the original model: checkpoint or pretrained tag (base=...)")
    wise.add_argument("--finetuned", help="the fine-tuned checkpoint (finetuned=...)")
    wise.add_argument("--alpha", help="comma-separated weights of the fine-tuned model in [0, 1], e.g. 0,0.5,1")
    wise.add_argument("--arch", help="open_clip architecture of both (arch=..., default countclip-tiny)")
    wise.add_argument("--out", help="output folder (out=DIR)")
    wise.set_defaults(run=_wise_ft)

    count = commands.add_parser("count", help="count objects in images")
    count.add_argument("images", nargs="+", metavar="IMAGE")
    count.add_argument("--noun", required=True, help="what to count, in the plural (e.g. dogs)")
    add_model_args(count)
    count.set_defaults(run=_count)

    retrieve = commands.add_parser("retrieve", help='rank a folder of images for a query such as "three dogs"')
    retrieve.add_argument("folder")
    retrieve.add_argument("--query", required=True)
    retrieve.add_argument("--top", type=positive_int, default=5)
    add_model_args(retrieve)
    retrieve.set_defaults(run=_retrieve)

    export = commands.add_parser("export", help="write a checkpoint as an open_clip folder (loads as local-dir:DIR)")
    export.add_argument("checkpoint", help="checkpoint file (local or s3://), pretrained tag, or local-dir:/hf-hub: folder")
    export.add_argument("--arch", default="countclip-tiny", help="open_clip architecture of the checkpoint")
    export.add_argument("--out", required=True,
                        help="folder to write (a previous export is replaced whole), or s3:// prefix")
    export.add_argument("--overwrite", action="store_true", help="write into a folder holding other files (kept)")
    export.set_defaults(run=_export)

    config = commands.add_parser("config", help="print a job's default config as YAML, with each field's docstring")
    config.add_argument("job", choices=JOBS)
    config.set_defaults(run=_config)

    world = commands.add_parser("world", help="CountWorld files: a noisy LAION-style source, the verifier")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    source = world_commands.add_parser("make-source", help="write a noisy LAION-style parquet source + ground truth")
    source.add_argument("--out", required=True)
    source.add_argument("--rows", type=positive_int, default=20000)
    source.add_argument("--seed", type=seed_int, default=0)
    source.add_argument("--image-size", type=image_side, default=128)
    source.add_argument("--grid", type=positive_int, default=None, help="place objects one per cell of a GRIDxGRID lattice")
    source.add_argument("--overwrite", action="store_true", help="write into a folder holding other files (kept)")
    source.set_defaults(run=_make_source)
    clean = world_commands.add_parser("make-dataset", help="write a training dataset straight from CountWorld's truth")
    clean.add_argument("--out", required=True)
    clean.add_argument("--rows", type=positive_int, default=4000)
    clean.add_argument("--seed", type=seed_int, default=0)
    clean.add_argument("--image-size", type=image_side, default=64)
    clean.add_argument("--overwrite", action="store_true", help="write into a folder holding other files (kept)")
    clean.set_defaults(run=_make_clean_dataset)
    zeroshot = world_commands.add_parser("make-zeroshot", help="write the zero-shot tasks in CLIP_benchmark's webdataset layout")
    zeroshot.add_argument("--out", required=True, help="root folder: the tasks go to OUT/wds/countworld_<task>/")
    zeroshot.add_argument("--images", type=positive_int, default=400)
    zeroshot.add_argument("--seed", type=seed_int, default=12345, help="12345: the images countclip evaluate scores")
    zeroshot.add_argument("--image-size", type=image_side, default=64)
    zeroshot.add_argument("--overwrite", action="store_true", help="write into a folder holding other files (kept)")
    zeroshot.set_defaults(run=_make_zeroshot)
    verifier = world_commands.add_parser("train-verifier", help="train the small YOLO that counts CountWorld objects")
    verifier.add_argument("--out", required=True)
    verifier.add_argument("--seed", type=seed_int, default=0)
    verifier.add_argument("--images", type=positive_int, default=1000)
    verifier.add_argument("--epochs", type=positive_int, default=100)
    verifier.add_argument("--image-size", type=image_side, default=128)
    verifier.add_argument("--device", default="cpu")
    verifier.set_defaults(run=_train_verifier)
    base = world_commands.add_parser("pretrain-base", help="train the stand-in pretrained CLIP that knows CountWorld's objects")
    base.add_argument("--out", required=True, help="folder for the weights and their card (countclip/weights to ship)")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--threads", type=int, default=2)
    base.add_argument("overrides", nargs="*", metavar="field=value", help="other recipe fields (e.g. sup_steps=3000)")
    base.set_defaults(run=_pretrain_base)
    check = world_commands.add_parser("eval-verifier", help="exact-count accuracy of a verifier on fresh scenes")
    check.add_argument("--weights", default="countworld")
    check.add_argument("--seed", type=seed_int, default=2026)
    check.add_argument("--n", type=positive_int, default=300)
    check.set_defaults(run=_eval_verifier)
    return parser


def job_config_class(job: str):
    """The config dataclass of a job (one of ``JOBS``)."""
    if job == "build-dataset":
        from countclip.jobs.build_dataset import BuildConfig as config_class
    elif job == "train":
        from countclip.jobs.train import TrainJobConfig as config_class
    elif job == "evaluate":
        from countclip.jobs.evaluate import EvalJobConfig as config_class
    elif job == "experiment":
        from countclip.jobs.experiment import ExperimentConfig as config_class
    elif job == "wise-ft":
        from countclip.jobs.wise_ft import WiseFTConfig as config_class
    else:
        raise ValueError(f"unknown job {job!r}; jobs are {list(JOBS)}")
    return config_class


# Fields a job cannot default (what to build from, what to evaluate): `countclip config` shows them
# with a placeholder value to replace.
PLACEHOLDERS = {
    "build-dataset": ["source=[s3://bucket/laion/part-00000.parquet]"],
    "evaluate": ["model.pretrained=runs/experiment/checkpoints/countclip.pt"],
    "wise-ft": ["base=runs/experiment/checkpoints/base.pt", "finetuned=runs/experiment/checkpoints/countclip.pt"],
}


def job_defaults(job: str):
    """The job's default config, with ``PLACEHOLDERS`` where a field has no default."""
    return job_config_class(job).load(None, PLACEHOLDERS.get(job, []))


def _config(args: argparse.Namespace) -> int:
    print(f"# countclip {args.job}: every field with its default (a file of these loads with --config)")
    for item in PLACEHOLDERS.get(args.job, []):
        print(f"# placeholder, replace it: {item}")
    print(commented_yaml(job_defaults(args.job)), end="")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from countclip.jobs.experiment import ExperimentConfig, run_experiment

    overrides = list(args.overrides)
    overrides += [f"seed={args.seed}"] if args.seed is not None else []
    overrides += [f"out={args.out}"] if args.out else []
    overrides += [f"base={args.base}"] if args.base else []
    cfg = ExperimentConfig.load(args.config, overrides)
    run_experiment(cfg, echo=lambda line: print(line, flush=True))
    print(f"report: {cfg.out}/report.json")
    return 0


def _build_dataset(args: argparse.Namespace) -> int:
    from countclip.environment import configure_ray_data_output
    from countclip.jobs.build_dataset import BuildConfig, build_dataset

    cfg = BuildConfig.load(args.config, list(args.overrides) + (["overwrite=true"] if args.overwrite else []))
    configure_ray_data_output(progress=args.ray_progress)
    build_dataset(cfg, echo=lambda line: print(line, flush=True))
    return 0


def _train(args: argparse.Namespace) -> int:
    from countclip.jobs.train import TrainJobConfig, run_training

    cfg = TrainJobConfig.load(args.config, list(args.overrides))
    run_training(cfg, echo=lambda line: print(line, flush=True))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from countclip.jobs.evaluate import EvalJobConfig, run_evaluation

    cfg = EvalJobConfig.load(args.config, list(args.overrides))
    run_evaluation(cfg, echo=lambda line: print(line, flush=True))
    return 0


def _wise_ft(args: argparse.Namespace) -> int:
    from countclip.jobs.wise_ft import WiseFTConfig, run_wise_ft
    from countclip.wiseft import parse_alphas

    overrides = list(args.overrides)
    for name in ("base", "finetuned", "arch", "out"):
        overrides += [f"{name}={getattr(args, name)}"] if getattr(args, name) else []
    overrides += [f"alphas={parse_alphas(args.alpha)}"] if args.alpha is not None else []
    cfg = WiseFTConfig.load(args.config, overrides)
    run_wise_ft(cfg, echo=lambda line: print(line, flush=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    from countclip.export import export_folder

    out = export_folder(args.checkpoint, args.arch, args.out, overwrite=args.overwrite)
    print(f"open_clip folder: {out} (open_clip.create_model_and_transforms('local-dir:{out}'))")
    return 0


def _predictor(args: argparse.Namespace):
    from countclip.predict import load_predictor

    return load_predictor(args.model, args.arch)


def _count(args: argparse.Namespace) -> int:
    from countclip.images import open_image
    from countclip.predict import count_prompts

    count_prompts(args.noun)  # an empty noun fails before the model loads
    images = [open_image(path) for path in args.images]
    predictor = _predictor(args)
    for path, result in zip(args.images, predictor.count(images, args.noun)):
        print(f"{path}\t{result['count']} {args.noun}\tconfidence {result['confidence']:.2f}")
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from countclip.evaluate import IMAGE_SUFFIXES
    from countclip.images import ImageError, open_image

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} {'is not a folder' if folder.exists() else 'does not exist'}; retrieve ranks "
                         "the images of a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images, kept, unreadable = [], [], []
    for path in paths:  # unreadable images are counted and skipped, as evaluate does
        try:
            images.append(open_image(path))
            kept.append(path)
        except (ImageError, ValueError, OSError) as exc:
            unreadable.append(f"{path.name}: {exc}")
    if unreadable:
        print(f"countclip: skipped {len(unreadable)} unreadable image(s) of {len(paths)} "
              f"(e.g. {one_line(unreadable[0], 150)})", file=sys.stderr)
    if not images:
        raise ValueError(f"{folder} holds no {'readable ' if paths else ''}images")
    scores = _predictor(args).rank(images, args.query)
    for index in scores.argsort()[::-1][: args.top]:
        print(f"{scores[index]:.3f}\t{kept[index]}")
    return 0


def _make_clean_dataset(args: argparse.Namespace) -> int:
    from countclip.world.files import write_clean_dataset

    manifest = write_clean_dataset(args.out, seed=args.seed, rows=args.rows, image_size=args.image_size,
                                   overwrite=args.overwrite)
    print(f"dataset: {args.out} ({manifest['rows_written']} rows)")
    return 0


def _make_source(args: argparse.Namespace) -> int:
    from countclip.world.files import write_source

    paths = write_source(args.out, seed=args.seed, rows=args.rows, image_size=args.image_size, grid=args.grid,
                         overwrite=args.overwrite)
    print(f"source: {paths['source']}\nground truth: {paths['truth']}")
    return 0


def _make_zeroshot(args: argparse.Namespace) -> int:
    from countclip.world.files import write_zeroshot_wds

    names = write_zeroshot_wds(args.out, seed=args.seed, n=args.images, image_size=args.image_size, same_size=True,
                               overwrite=args.overwrite)
    print(f"zero-shot tasks: {' '.join(names)} (clip_benchmark eval --dataset_root '{args.out}/wds/{{dataset}}')")
    return 0


def _train_verifier(args: argparse.Namespace) -> int:
    from countclip.world.detector import train_countworld_verifier

    path = train_countworld_verifier(args.out, seed=args.seed, images=args.images, epochs=args.epochs,
                                     image_size=args.image_size, device=args.device)
    print(f"verifier: {path}")
    return 0


def _pretrain_base(args: argparse.Namespace) -> int:
    from countclip.world.base import BaseRecipe, pretrain_base

    recipe = BaseRecipe.load(None, [f"seed={args.seed}", f"threads={args.threads}", *args.overrides])
    print(f"base: {pretrain_base(args.out, recipe, echo=lambda line: print(line, flush=True))}")
    return 0


def _eval_verifier(args: argparse.Namespace) -> int:
    from countclip.data.verify import VerifyConfig
    from countclip.world.detector import evaluate_counts

    weights = VerifyConfig(weights=args.weights).resolved_weights()
    print(json.dumps(evaluate_counts(weights, seed=args.seed, n=args.n), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_environment()
    try:
        return args.run(args)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except (OSError, ValueError, KeyError, RecursionError) as exc:  # bad input: files, values, URIs
        return _fail(str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("COUNTCLIP_DEBUG", "").strip() not in ("", "0"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (a bug; COUNTCLIP_DEBUG=1 shows the traceback)", 1)



def _fail(message: str, status: int) -> int:
    """One line on stderr: bounded, control characters escaped, secrets in URIs masked."""
    from countclip.tracking import mask_credentials

    print(f"countclip: {one_line(mask_credentials(message), MAX_MESSAGE)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
