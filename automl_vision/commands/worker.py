"""``automl-vision worker``: join an existing search from this or another machine."""

from __future__ import annotations

import argparse
import os

from automl_vision.commands import add_plugin_option, plugins_into_env

HELP = "join an existing search (its study in a shared storage) and run its trials"

DESCRIPTION = (
    "Join a search started with 'automl-vision search ... --storage URL' and run its trials until the study "
    "has its --n-trials trials or the search's time budget ends. Only the storage and the study name are needed: "
    "the data location, the search space and the settings are stored with the study, and the trials' artefacts "
    "go to the search's run directory, which must be reachable from this machine (a shared file system). "
    "The worker refuses to start when its automl-vision version or plugins differ from the study's."
)


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help=HELP, description=DESCRIPTION)
    p.add_argument("--storage", metavar="URL", default=None,
                   help="the study's storage: postgresql://user@host/db, mysql://..., or the search's study.journal "
                        "file (default: $AUTOML_VISION_STORAGE, which keeps a password off the command line)")
    p.add_argument("--study-name", metavar="NAME",
                   help="the study to join (default: the only study in the storage)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="override the study's --precision on this worker (default: the study's)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default=None,
                   help="override the study's --channels-last on this worker (default: the study's)")
    p.add_argument("--run-dir", metavar="PATH",
                   help="the search's run directory as this machine sees it (default: the path stored with the study)")
    p.add_argument("--data", metavar="DATA_DIR",
                   help="the data as this machine sees it, when it is mounted elsewhere (default: the stored location)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for this worker (default: torch's choice)")
    p.add_argument("--n-trials", type=int, metavar="N",
                   help="run until the study has N finished trials (default: the search's --n-trials)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="work for this long, e.g. 30m (default: until the search's own time budget ends)")
    p.add_argument("--name", default=None, help="a short name for this worker's log lines")
    p.add_argument("--plain", action="store_true", help="plain log lines instead of the live display")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")
    add_plugin_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automl_vision.settings import parse_duration
    from automl_vision.types import UsageError

    storage = args.storage or os.environ.get("AUTOML_VISION_STORAGE")
    if not storage:
        raise UsageError("--storage URL is required (or set $AUTOML_VISION_STORAGE): the storage of the study to join, "
                         "e.g. postgresql://user@dbhost/automl or RUN_DIR/study.journal")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be at least 1")
    if args.n_trials is not None and args.n_trials < 1:
        raise UsageError(f"--n-trials {args.n_trials}: must be at least 1")
    time_budget = parse_duration(args.time_budget) if args.time_budget else None
    if args.plugin:
        # loaded with the study's own plugins, exactly as $AUTOML_VISION_PLUGINS is (the fingerprint check applies)
        plugins_into_env(os.environ, args.plugin)
    from automl_vision.search.join import join_study

    join_study(storage, args.study_name, device=args.device, run_dir=args.run_dir, data=args.data,
               threads=args.threads, name=args.name, precision=args.precision, channels_last=args.channels_last, n_trials=args.n_trials, time_budget=time_budget,
               plain=True if args.plain else None)
    return 0
