"""Exporting a run's model: ONNX, TorchScript or a safetensors state dict, verified at once.

ONNX and TorchScript exports hold the whole :class:`~automl_vision.predict.ProbabilityModel`:
``uint8`` images ``(N, C, S, S)`` in, class probabilities ``(N, K)`` out, with the
normalisation, the flip test-time augmentation, the ensemble's weighted soft vote and the
temperature inside the graph. So an ensemble is exported as one graph, and a user serves
it with nothing but a resize: the preprocessing is written beside the export as JSON.

A ``state-dict`` export is the bare network of one model as safetensors plus the JSON
that says how to rebuild it (model family and parameters) and how to feed it.

Every export is verified before it is put in place: the file is loaded back
(onnxruntime for ONNX, ``torch.jit.load`` for TorchScript, safetensors into a rebuilt
network for state dicts) and its probabilities on a batch of the run's real test
images are compared with PyTorch's; the largest absolute difference must stay within
:data:`TOLERANCE`. A failed check leaves no file behind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_vision.models import crop_views, input_sizes, sides_json
from automl_vision.predict import Deliverable, ProbabilityModel, load_deliverable
from automl_vision.rundir import open_run
from automl_vision.rundir import RunDir, path_inside, write_json
from automl_vision.types import UsageError

FORMATS = ("onnx", "torchscript", "state-dict")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "state-dict": ".safetensors"}
# largest allowed absolute difference between the export's probabilities and PyTorch's
TOLERANCE = 1e-4
VERIFY_IMAGES = 16


class ExportVerificationError(Exception):
    """The exported file does not reproduce PyTorch's outputs within the tolerance."""


# ------------------------------------------------------------------ real images to verify on
def verification_batch(rd: RunDir, sizes: list[int], in_chans: int, n: int = VERIFY_IMAGES) -> list[np.ndarray]:
    """Up to ``n`` real images of the run (test split first, then validation), one
    ``uint8`` ``(N, S, S, C)`` array per size, from the run's decoded-image cache or,
    when that is gone, decoded again from the data folder."""
    from automl_vision.data.cache import read_cached
    from automl_vision.data.images import ImageDecodeError, decode

    splits = rd.read_splits() or {}
    keys = splits.get("keys") or []
    pos = {k: i for i, k in enumerate(keys)}
    chosen = [k for name in ("test", "val", "train") for k in (splits.get("splits") or {}).get(name, [])][:n]
    if not chosen:
        raise UsageError(f"{rd.path}: no splits.json; cannot find real images to verify the export on")
    idx = np.asarray([pos[k] for k in chosen])
    root = (rd.read_data_report() or {}).get("root") or ""
    out = []
    for size in sizes:
        cached = read_cached(rd.cache_dir(size, in_chans), count=len(keys))
        if cached is not None:
            arr = np.asarray(cached[idx])
        else:
            imgs = []
            for k in chosen:
                path = path_inside(root, k, rd.splits, f"the data folder {root}", follow_symlinks=False)
                try:
                    imgs.append(decode(path, size, in_chans))
                except (ImageDecodeError, OSError):
                    continue
            if not imgs:
                raise UsageError(
                    f"{rd.path}: the image cache at {size}px is gone and the data folder {root!r} cannot be read; "
                    "the export cannot be verified on real images"
                )
            arr = np.stack(imgs)
        out.append(arr)
    m = min(a.shape[0] for a in out)
    return [a[:m] for a in out]


def _tensors(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous() for a in arrays]


def _input_names(module: ProbabilityModel) -> list[str]:
    if len(module.sizes) == 1:
        return ["image"]
    return [f"image_{s}px" for s in module.sizes]


# ------------------------------------------------------------------ formats
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # the [export] extra: exporter, verifier, dynamo exporter


def _require_onnx() -> None:
    """Say which optional packages ``--format onnx`` lacks and how to install them, before any work."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"--format onnx needs the optional package(s) {', '.join(missing)}: "
                         "pip install 'automl-vision[export]' (or export --format torchscript, which needs nothing more)")


def _export_onnx(module: ProbabilityModel, example: list[torch.Tensor], path: Path) -> dict[str, Any]:
    names = _input_names(module)
    log = io.StringIO()
    errors = []
    # the torch.export-based exporter is the default of current PyTorch; the TorchScript-based
    # one is the fallback for a network it cannot capture
    for dynamo in (True, False):
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    torch.onnx.export(module, tuple(example), str(path), input_names=names,
                                      output_names=["probabilities"], dynamo=True, verbose=False,
                                      dynamic_shapes={"images": tuple({0: batch} for _ in example)},
                                      external_data=False)
                else:
                    torch.onnx.export(module, tuple(example), str(path), input_names=names,
                                      output_names=["probabilities"], dynamo=False, opset_version=17,
                                      dynamic_axes={**{n: {0: "batch"} for n in names}, "probabilities": {0: "batch"}})
            info = {"exporter": "torch.onnx (torch.export-based)" if dynamo else "torch.onnx (TorchScript-based)"}
            if errors:
                info["fallback_reason"] = errors[0]
            return info
        except Exception as exc:  # noqa: BLE001 - the next exporter is tried, and both errors reported
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {exc}".splitlines()[0])
            path.unlink(missing_ok=True)
    raise UsageError("ONNX export failed: " + "; ".join(errors))


def _run_onnx(path: Path, names: list[str], inputs: list[torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {n: x.numpy() for n, x in zip(names, inputs)})[0]


def _export_torchscript(module: ProbabilityModel, example: list[torch.Tensor], path: Path) -> dict[str, Any]:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(example), check_trace=False)
        traced.save(str(path))
    return {"exporter": "torch.jit.trace"}


def _run_torchscript(path: Path, inputs: list[torch.Tensor]) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
        return loaded(*inputs).float().numpy()


# ------------------------------------------------------------------ preprocessing JSON
def preprocessing_json(d: Deliverable, fmt: str, names: list[str]) -> dict[str, Any]:
    module = d.module
    spec0 = d.specs[0]
    common = {
        "classes": d.classes,
        "in_chans": module.in_chans,
        "color_mode": "L (greyscale)" if module.in_chans == 1 else "RGB",
        "image_size": max(module.sizes),
        "decode": ("open with Pillow, apply the EXIF orientation, convert to " + ("L" if module.in_chans == 1 else
                   "RGB (alpha composited on white)") + ", resize to S x S for each input's side S "
                   "(inputs[].shape; image_size for a single input): "
                   "img.resize((S, S), Image.Resampling.BILINEAR, reducing_gap=3.0); keep uint8"),
        "model": d.kind,
        "description": d.describe(),
        "members": [{"trial": m.get("trial"), "weight": m.get("weight"), "model": s.get("label"),
                     **sides_json(s), "trained_at": s["image_size"], "mean": s["mean"], "std": s["std"]}
                    for m, s in zip(d.members, d.specs)],
        "temperature": module.temperature,
        "tta": "horizontal flip, probabilities averaged" if module.tta else "none",
    }
    if fmt == "state-dict":
        return {
            **common,
            "format": "state-dict (safetensors)",
            "architecture": {"family": spec0["family"], "params": spec0["params"], "num_classes": spec0["num_classes"],
                             "in_chans": spec0["in_chans"], "image_size": spec0["image_size"]},
            "input": {"layout": "NCHW float32", "scale": "pixel / 255", "mean": spec0["mean"], "std": spec0["std"],
                      "normalise": "(pixel / 255 - mean) / std per channel"},
            "output": "logits (N, K): probabilities are softmax(logits / temperature)"
                      + ("; average with the horizontally flipped image's probabilities (tta)" if module.tta else "")
                      + ("; average the probabilities of the image decoded at each side of the member's "
                         "average_over_sizes" + (" and of each crop of its average_over_crops (cut at top_left from "
                                                 "the image decoded at of_size, crop x crop pixels)"
                                                 if crop_views(spec0)[0] else "")
                         + ", then apply the temperature to the average as softmax(log(p) / T)"
                         if len(input_sizes(spec0)) > 1 else ""),
            "rebuild": "automl_vision.models.build_model(architecture) then load_state_dict(safetensors.torch.load_file(...))",
        }
    return {
        **common,
        "format": fmt,
        "inputs": [{"name": n, "shape": ["batch", module.in_chans, s, s], "dtype": "uint8",
                    "layout": "NCHW, raw pixels 0..255"} for n, s in zip(names, module.sizes)],
        "output": {"name": "probabilities", "shape": ["batch", len(d.classes)], "dtype": "float32",
                   "meaning": "class probabilities in the order of 'classes'; normalisation, test-time augmentation, "
                              "the ensemble vote and the temperature are inside the graph"},
    }


# ------------------------------------------------------------------ main entry
def default_out(rd: RunDir, fmt: str, kind: str) -> Path:
    name = kind.replace(":", "-")
    return rd.path / "export" / f"{name}{SUFFIX[fmt]}"


def sidecar(out: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.preprocessing.json`` (two formats of one model never share a file)."""
    return out.with_name(out.name + ".preprocessing.json")


def export(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, model: str = "auto",
           tolerance: float = TOLERANCE, log=print, plugins: list[str] | None = None) -> dict[str, Any]:
    """Export the run's ``model`` (``auto``, ``best``, ``ensemble``, ``trial:N``) as ``fmt``.

    ``plugins``: plugin modules or files to load (``--plugin``); a run's own are never imported.

    Returns the written preprocessing JSON (with a ``verified`` section). Raises
    UsageError for bad input and ExportVerificationError when the export does not
    reproduce PyTorch's probabilities.
    """
    from automl_vision.plugins import run_plugin_manager

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    rd = open_run(run_dir)
    pm = run_plugin_manager(rd.read_run() or {}, plugins)
    d = load_deliverable(rd.path, model, pm)
    if fmt == "state-dict" and len(d.module.members) > 1:
        if (model or "auto") == "auto":
            log("the deliverable is an ensemble; a state dict holds one network, so the best single model is exported")
            d = load_deliverable(rd.path, "best", pm)
        else:
            raise UsageError("--format state-dict holds one network; export the ensemble as one graph with "
                             "--format onnx (or torchscript), or use --model best")
    module = d.module.to("cpu").eval()
    out_path = Path(out).expanduser() if out else default_out(rd, fmt, d.kind)
    if not out:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.is_dir():
        out_path = out_path / (d.kind.replace(":", "-") + SUFFIX[fmt])
    if not out_path.parent.exists():
        raise UsageError(f"--out {out_path}: folder {out_path.parent} does not exist")
    names = _input_names(module)

    arrays = verification_batch(rd, module.sizes, module.in_chans)
    inputs = _tensors(arrays)
    with torch.no_grad():
        expected = module(*inputs).float().numpy()
        expected_one = module(*[x[:1] for x in inputs]).float().numpy()
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp{out_path.suffix}")
    t0 = time.time()
    try:
        if fmt == "onnx":
            info = _export_onnx(module, inputs, tmp)
            got = _run_onnx(tmp, names, inputs)
            got_one = _run_onnx(tmp, names, [x[:1] for x in inputs])
            import onnxruntime

            runtime = f"onnxruntime {onnxruntime.__version__}"
        elif fmt == "torchscript":
            info = _export_torchscript(module, inputs, tmp)
            got = _run_torchscript(tmp, inputs)
            got_one = _run_torchscript(tmp, [x[:1] for x in inputs])
            runtime = f"torch.jit.load (torch {torch.__version__})"
        else:
            from safetensors.torch import load_file

            from automl_vision.models import build_model
            from automl_vision.rundir import save_weights

            net = module.members[0]
            save_weights(tmp, net.state_dict(), metadata={"family": str(d.specs[0]["family"])})
            rebuilt = build_model(d.specs[0], pm)
            rebuilt.load_state_dict(load_file(str(tmp)))
            again = ProbabilityModel([rebuilt.eval()], d.specs, [1.0], module.temperature, module.tta)
            with torch.no_grad():
                got = again(*inputs).float().numpy()
                got_one = again(*[x[:1] for x in inputs]).float().numpy()
            info = {"exporter": "safetensors"}
            runtime = "safetensors into a network rebuilt from the JSON"
        diff = float(max(np.abs(got - expected).max(), np.abs(got_one - expected_one).max()))
        if not np.isfinite(diff) or diff > tolerance:
            raise ExportVerificationError(
                f"the {fmt} export does not reproduce PyTorch: largest probability difference {diff:.3g} on "
                f"{len(arrays[0])} real images (tolerance {tolerance:g}); nothing was written"
            )
        meta = preprocessing_json(d, fmt, names)
        meta.update(info)
        meta["verified"] = {
            "runtime": runtime,
            "images": int(len(arrays[0])),
            "batch_sizes": [int(len(arrays[0])), 1],
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "agree_top1": bool((got.argmax(1) == expected.argmax(1)).all()),
        }
        meta["file"] = out_path.name
        meta["seconds"] = time.time() - t0
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(sidecar(out_path), meta)
    meta["path"] = str(out_path)
    meta["preprocessing_path"] = str(sidecar(out_path))
    return meta
