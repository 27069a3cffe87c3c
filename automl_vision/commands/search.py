"""``automl-vision search DATA_DIR``: run (or resume) a model search."""

from __future__ import annotations

import argparse

from automl_vision.commands import add_json_option, add_plugin_option, human_text_to_stderr, print_json, report_document
from automl_vision.settings import settings_from_options

HELP = "run (or resume) a model search on a folder of labelled images"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _duration(text: str) -> float:
    from automl_vision.settings import parse_duration
    from automl_vision.types import UsageError

    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed(text: str) -> int:
    from automl_vision.settings import SEED_RANGE, check_seed
    from automl_vision.types import UsageError

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    except UsageError:
        raise argparse.ArgumentTypeError(f"{SEED_RANGE}, got {text}") from None


def _sizes(text: str) -> list[int]:
    from automl_vision.settings import parse_sizes
    from automl_vision.types import UsageError

    try:
        return parse_sizes(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _preference(text: str) -> tuple[str, str]:
    name, sep, plugin = text.partition("=")
    if not sep or not name.strip() or not plugin.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PLUGIN, e.g. mcc=automl-vision-mixer, got {text!r}")
    return name.strip(), plugin.strip()


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``search`` and anything that starts a search."""
    g = p.add_argument_group("budget")
    g.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="hard limit on the whole search including the final evaluation, e.g. 90s, 10m, 2h "
                        "(default: 10m unless --n-trials is given)")
    g.add_argument("--n-trials", type=_positive_int, metavar="N",
                   help="stop after N finished trials in the study (trials of earlier runs of the study count)")
    g.add_argument("--max-epochs", type=_positive_int, metavar="N",
                   help="epochs of a trial that is not pruned (default: from --preset: fast 8, balanced 20, best 40)")
    g.add_argument("--preset", choices=["fast", "balanced", "best"], default="balanced",
                   help="search preset: the model zoo, epochs, pruner and augmentation presets; fast: small "
                        "backbones, 8 epochs, successive halving; balanced: 20 epochs, hyperband; best: the "
                        "whole zoo, 40 epochs (default: balanced)")
    s = p.add_argument_group("search space")
    s.add_argument("--image-size", type=_sizes, metavar="PX[,PX...]",
                   help="input resolution in pixels; several values are searched (default: chosen from the images)")
    s.add_argument("--models", metavar="LIST",
                   help="comma-separated model families (cnn, timm, or a plugin's) and/or timm model names or "
                        "patterns, e.g. 'cnn,resnet18,efficientnet_*' (default: every family, curated zoo)")
    s.add_argument("--space", metavar="FILE",
                   help="YAML search space file restricting or extending any parameter "
                        "(see 'automl-vision space show' and docs/search-space.md)")
    s.add_argument("--metric", default="accuracy",
                   help="objective metric on the validation split; any registered metric (default: accuracy)")
    s.add_argument("--objectives", metavar="LIST",
                   help="multi-objective search: the metric then latency, params and/or macs, e.g. "
                        "accuracy,latency; the Pareto front goes to pareto.json (replaces --metric)")
    s.add_argument("--pruner", choices=["hyperband", "sha", "median", "none"], default=None,
                   help="early stopping of bad trials over epochs (default: from --preset; fast: sha, "
                        "else hyperband)")
    s.add_argument("--sampler", choices=["tpe", "random", "nsga2"], default="tpe",
                   help="Optuna sampler (default: tpe, multi-objective TPE with --objectives; nsga2 for "
                        "NSGA-II; all seeded by --seed)")
    s.add_argument("--no-portfolio", dest="portfolio", action="store_false", default=True,
                   help="do not start a new study with the warm-start portfolio of strong configurations")
    w = p.add_argument_group("pretrained weights and fine-tuning")
    w.add_argument("--pretrained", action="store_true",
                   help="start timm backbones from timm's pretrained weights (downloaded from the Hugging Face "
                        "hub, or its local cache)")
    w.add_argument("--weights", metavar="PATH_OR_DIR",
                   help="local weights for timm backbones: a .safetensors or state-dict file named after the "
                        "model (resnet18.safetensors), or a folder of such files; the classifier is replaced")
    w.add_argument("--init-from", metavar="RUN_DIR",
                   help="fine-tune the best model of an earlier run on this data (new classifier head)")
    w.add_argument("--freeze-stages", type=int, default=0, metavar="N",
                   help="with --pretrained/--weights/--init-from: keep the stem and the first N stages frozen")
    w.add_argument("--backbone-lr-scale", type=float, default=None, metavar="F",
                   help="with loaded weights: the backbone learns at F x the learning rate of the new head "
                        "(default: 0.1)")
    s.add_argument("--seed", type=_seed, default=0,
                   help="seed of the split, the sampler and training, 0 to 4294967295 (default: 0)")
    d = p.add_argument_group("execution")
    d.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps (default: auto = a GPU when there is one)")
    d.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto measures the fastest accurate path on this CPU, or checks the GPU (default: auto)")
    d.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="channels-last memory format (default: auto, measured on CPU, on for CUDA)")
    d.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run N worker processes on the same study in parallel (CPU: the cores are divided between "
                        "them; with --devices: assigned round-robin to the devices) (default: 1, or one per device)")
    d.add_argument("--devices", metavar="LIST",
                   help="one worker per device: auto (every GPU, else the CPU), or a list like cuda:0,cuda:1")
    d.add_argument("--compile", action="store_true",
                   help="torch.compile each trial's model (pays a compile time per trial; helps long trials on GPUs)")
    d.add_argument("--device-data", choices=["auto", "on", "off"], default="auto",
                   help="keep the cached images on the GPU (auto: when they fit in 30%% of its free memory; off: "
                        "pinned host memory with non-blocking copies) (default: auto)")
    r = p.add_argument_group("run directory and study")
    r.add_argument("--out", metavar="RUN_DIR",
                   help="run directory: a new or empty folder, or an earlier run's folder to resume it "
                        "(default: runs/<study-name>)")
    r.add_argument("--overwrite", action="store_true",
                   help="write the run into an --out folder that holds other files (not a run of this study): "
                        "files of a run's names there (run.json, leaderboard.csv, best/, trials/ ...) are replaced")
    r.add_argument("--study-name", help="Optuna study name (default: from the data folder's name)")
    r.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL, e.g. postgresql://user@host/db (default: $AUTOML_VISION_STORAGE, else a "
                        "journal file in the run directory)")
    add_plugin_option(r)
    r.add_argument("--prefer", action="append", default=[], type=_preference, metavar="NAME=PLUGIN",
                   help="when two plugins register the same dataset source, model family or metric NAME, "
                        "use the one from PLUGIN (repeatable; see 'automl-vision plugins')")
    f = p.add_argument_group("final model (see docs/prediction-and-export.md)")
    f.add_argument("--regime", choices=["auto", "small", "standard"], default="auto",
                   help="small: the search selects a configuration on validation, the test split scores it, then it "
                        "is trained once more on every labelled image in the last 60%% of --time-budget and that "
                        "model is delivered; standard: the delivered model is the search's own, trained on the train "
                        "split (default: auto = small for at most 6,000 labelled images with a time budget)")
    f.add_argument("--refit", action="store_true",
                   help="retrain the chosen configurations on train + validation with the epochs the search found "
                        "(skipped, with a note, when the time budget has no room for it)")
    f.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="try flip test-time augmentation, kept only where it improves the objective on validation "
                        "(default: on; --no-tta skips it)")
    f.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="fit a softmax temperature on validation, so predicted probabilities match observed accuracy; "
                        "it never changes a prediction (default: on; --no-calibrate keeps the raw probabilities)")
    p.add_argument("--plain", action="store_true", help="plain log lines instead of the live display")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")


def add_parser(sub) -> None:
    p = sub.add_parser("search", help=HELP, description=HELP + ". Running the same command again resumes the study.")
    p.add_argument("data", metavar="DATA_DIR",
                   help="class-per-folder image tree, a tree with train/ val/ [test/], a .csv manifest, or NAME:LOCATION "
                        "for a plugin's dataset source")
    add_search_options(p)
    add_json_option(p, "the run directory and the final report: deliverable, best trial and model, validation "
                       "and test metrics with their intervals, final fit, test_evaluations")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from automl_vision.search.run import run_search

    options = {k: v for k, v in vars(args).items()
               if k not in ("data", "out", "func", "command", "overwrite", "json", "started")}
    options["storage"] = args.storage or os.environ.get("AUTOML_VISION_STORAGE") or None  # docs/environment.md
    settings = settings_from_options(args.data, args.out, **options)
    with human_text_to_stderr(args.json):
        report = run_search(settings, argv=sys.argv, plain=True if args.plain else None, overwrite=args.overwrite,
                            started=getattr(args, "started", None))
    if args.json:
        print_json(report_document("search", settings.run_dir, report))
    # a search that delivers nothing (no trial finished with a score) is a failure a script must see
    return 1 if report.get("error") else 0
