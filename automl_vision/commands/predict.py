"""``automl-vision predict RUN_DIR IMAGES...``: classify image files with a run's model."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import os
import sys
from pathlib import Path
from typing import Any

from automl_vision.commands import add_json_option, add_plugin_option, human_text_to_stderr, print_json

HELP = "classify images (files, folders or glob patterns) with the model of a finished search"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help=HELP,
        description=HELP + ". Writes one CSV row per image: the predicted class, its probability and the next "
        "most likely classes. Files that cannot be read get a row that says why; the others are still predicted.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a search (its --out)")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files, folders (searched recursively for image files) or glob patterns "
                        "such as 'photos/**/*.jpg' (quote them to let automl-vision expand them)")
    p.add_argument("--out", default="predictions.csv", metavar="CSV",
                   help="where to write the predictions; '-' for standard output (default: predictions.csv)")
    p.add_argument("--model", default="auto", metavar="MODEL",
                   help="auto (the run's deliverable), best, ensemble or trial:N (default: auto)")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="also list the K most likely classes with their probabilities (default: 3)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    add_plugin_option(p)
    add_json_option(p, "the CSV written, the model used, how many images were predicted and skipped, and the "
                       "predictions per class; needs --out FILE")
    p.set_defaults(func=run)


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def expand(inputs: list[str]) -> list[tuple[str, str | None]]:
    """Each input -> (path, problem or None); folders and globs become their image files, sorted."""
    exts = image_extensions()
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: str, problem: str | None = None) -> None:
        if path not in seen:
            seen.add(path)
            out.append((path, problem))

    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                str(Path(root) / name)
                for root, dirs, files in os.walk(item, followlinks=False)
                for name in files
                if Path(name).suffix.lower() in exts and not name.startswith(".")
            )
            if not found:
                add(item, "folder holds no image file")
            for f in found:
                add(f)
        elif os.path.exists(item):
            add(item)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = [f for f in matches if os.path.isfile(f)]
            if not files:
                add(item, "no file matches this pattern")
            for f in files:
                add(f)
        else:
            add(item, "no such file or directory")
    return out


def _printable(path: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (a name from another system) become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def run(args: argparse.Namespace) -> int:
    from automl_vision.types import UsageError

    if args.json and args.out == "-":
        raise UsageError("--json writes its document to standard output, so the CSV cannot go there too: "
                         "give --out FILE with --json")
    from automl_vision.rundir import open_run

    open_run(args.run_dir)  # before torch is imported: a mistyped path is refused at once
    with human_text_to_stderr(args.json):
        code, summary = _predict(args)
    if args.json:
        print_json(summary)
    return code


def _predict(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Write the CSV and tell the user on stderr; (exit status, the ``--json`` document)."""
    from automl_vision.predict import Predictor, decode_batch
    from automl_vision.rundir import atomic_write_text
    from automl_vision.types import UsageError

    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.out != "-":
        if Path(args.out).expanduser().is_dir():
            raise UsageError(f"--out {args.out}: is a folder; give the CSV file to write, e.g. --out "
                             f"{Path(args.out) / 'predictions.csv'}")
        out_dir = Path(args.out).expanduser().resolve().parent
        if not out_dir.is_dir():
            raise UsageError(f"--out {args.out}: folder {out_dir} does not exist")
    predictor = Predictor.from_run(args.run_dir, model=args.model, device=args.device, batch_size=args.batch_size,
                                   plugins=args.plugin)
    items = expand(args.images)
    if all(problem is not None for _p, problem in items):
        details = "; ".join(f"{p}: {problem}" for p, problem in items[:5])
        raise UsageError(f"no image to predict ({details}). Give image files, folders or glob patterns.")
    k = min(args.top_k, len(predictor.classes))
    header = ["path", "prediction", "probability"]
    for i in range(2, k + 1):
        header += [f"top{i}", f"top{i}_probability"]
    header.append("error")
    rows: list[list[str]] = []
    n_ok = 0
    chunk = max(args.batch_size, 256)  # decode in chunks so memory stays flat for many files
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        todo = [p for p, problem in part if problem is None]
        arrays, ok, errors = decode_batch(todo, predictor.sizes, predictor.in_chans)
        probs = predictor.probs_of_arrays(arrays)
        by_path = {todo[i]: probs[j] for j, i in enumerate(ok)}
        err_of = {todo[i]: reason for i, reason in errors.items()}
        for path, problem in part:
            if path in by_path:
                p = by_path[path]
                order = p.argsort()[::-1][:k]
                row = [path, predictor.classes[order[0]], f"{p[order[0]]:.6f}"]
                for c in order[1:]:
                    row += [predictor.classes[c], f"{p[c]:.6f}"]
                rows.append(row + [""])
                n_ok += 1
            else:
                rows.append([path, "", ""] + [""] * (2 * (k - 1)) + [problem or err_of.get(path, "unreadable")])
    undecodable = sum(1 for row in rows if _printable(row[0]) != row[0])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_printable(cell) for cell in row] for row in rows)  # an error may quote the name too
    if args.out == "-":
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write_text(args.out, buf.getvalue())
    where = "standard output" if args.out == "-" else args.out
    if undecodable:
        print(f"note: {undecodable} file name(s) are not valid UTF-8; their bytes are written as \\xNN escapes "
              f"in the 'path' column of {where}", file=sys.stderr)
    failed = len(rows) - n_ok
    print(f"predicted {n_ok} image(s) with the {predictor.describe()} -> {where}", file=sys.stderr)
    if failed:
        print(f"warning: {failed} of {len(rows)} input(s) could not be predicted; their rows in {where} say why "
              "(column 'error')", file=sys.stderr)
        for path, problem in [(r[0], r[-1]) for r in rows if r[-1]][:5]:
            print(f"  {path}: {problem}", file=sys.stderr)
    per_class = dict.fromkeys(predictor.classes, 0)
    for row in rows:
        if not row[-1]:
            per_class[row[1]] += 1
    d = predictor.deliverable
    members = d.members or [{"trial": d.specs[0].get("trial"), "weight": 1.0}]
    summary = {
        "command": "predict",
        "out": "-" if args.out == "-" else str(Path(args.out).expanduser().resolve()),
        "run_dir": str(Path(args.run_dir).expanduser().resolve()),
        "model": {"kind": predictor.kind, "description": predictor.describe(),
                  "members": [{"trial": m.get("trial"), "weight": m.get("weight")} for m in members],
                  "tta": bool(predictor.module.tta), "temperature": predictor.module.temperature,
                  "image_size": predictor.image_size, "image_sizes": predictor.sizes},
        "images": len(rows),
        "predicted": n_ok,
        "skipped": failed,
        "per_class": per_class,
        "skipped_files": [{"path": _printable(r[0]), "error": _printable(r[-1])} for r in rows if r[-1]],
        "top_k": k,
        "non_utf8_names": undecodable,
    }
    return (0 if n_ok else 1), summary
