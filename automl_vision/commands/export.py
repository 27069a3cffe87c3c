"""``automl-vision export RUN_DIR --format onnx|torchscript|state-dict``: export a run's model."""

from __future__ import annotations

import argparse

from automl_vision.commands import add_json_option, add_plugin_option, human_text_to_stderr, print_json

HELP = "export the model of a finished search as ONNX, TorchScript or a safetensors state dict, verified at once"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help=HELP,
        description=HELP + ". ONNX and TorchScript exports take uint8 images (N, C, S, S) and return class "
        "probabilities, with normalisation, test-time augmentation, the ensemble vote and the temperature inside; "
        "the ensemble is exported as one graph. The preprocessing (size, colour mode, mean, std, classes) is "
        "written beside the export as FILE.preprocessing.json (e.g. model.onnx.preprocessing.json). The export is loaded back (onnxruntime, "
        "torch.jit.load, safetensors) and compared with PyTorch on real images of the run before it is kept.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a search (its --out)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "state-dict"], dest="fmt",
                   help="onnx (served with onnxruntime), torchscript (torch.jit.load) or state-dict (safetensors "
                        "weights of one network plus the JSON to rebuild it)")
    p.add_argument("--out", metavar="PATH",
                   help="file to write, or an existing folder (default: RUN_DIR/export/<model>.onnx|.pt|.safetensors)")
    p.add_argument("--model", default="auto", metavar="MODEL",
                   help="auto (the run's deliverable), best, ensemble or trial:N (default: auto)")
    p.add_argument("--tolerance", type=float, default=None, metavar="ATOL",
                   help="largest allowed difference of any probability between the export and PyTorch (default: 1e-4)")
    add_plugin_option(p)
    add_json_option(p, "the files written, the format, the model and the verification result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from automl_vision.rundir import open_run

    open_run(args.run_dir)  # before torch is imported: a mistyped path is refused at once
    from automl_vision.export import TOLERANCE, ExportVerificationError, export

    with human_text_to_stderr(args.json):
        try:
            meta = export(args.run_dir, args.fmt, args.out, model=args.model,
                          tolerance=TOLERANCE if args.tolerance is None else args.tolerance,
                          log=lambda msg: print(msg, file=sys.stderr), plugins=args.plugin)
        except ExportVerificationError as exc:
            # nothing was written: no document on stdout, as for a usage error
            print(f"automl-vision export: verification failed: {exc}", file=sys.stderr)
            return 1
        v = meta["verified"]
        print(f"exported {meta['description']} as {args.fmt} -> {meta['path']}")
        print(f"preprocessing -> {meta['preprocessing_path']}")
        print(f"verified with {v['runtime']} on {v['images']} real images (batches of {v['images']} and 1): largest "
              f"probability difference {v['max_abs_diff']:.2g} (tolerance {v['tolerance']:g})")
    if args.json:
        from pathlib import Path

        path, sidecar = (str(Path(p).resolve()) for p in (meta["path"], meta["preprocessing_path"]))
        print_json({
            "command": "export",
            "format": args.fmt,
            "path": path,
            "preprocessing_path": sidecar,
            "files": [path, sidecar],
            "bytes": Path(path).stat().st_size,
            "model": meta["model"],
            "description": meta["description"],
            "classes": meta["classes"],
            "image_size": meta["image_size"],
            "in_chans": meta["in_chans"],
            "verified": v,
            "seconds": meta.get("seconds"),
        })
    return 0
