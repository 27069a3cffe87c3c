"""``automl-vision export``: files that serve without automl-vision and match PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import automl_vision
from automl_vision.cli import main
from automl_vision.rundir import RunDir
from conftest import run_cli


@pytest.fixture(scope="module")
def ensembled_run(digits_dir, tmp_path_factory) -> Path:
    """A real tiny search whose ensemble has two members: two trials, no pruner (so both
    finish whatever their scores), then the top-2 ensemble."""
    run = tmp_path_factory.mktemp("export") / "run"
    proc = run_cli("search", digits_dir, "--out", run, "--n-trials", "2", "--max-epochs", "1", "--image-size", "16",
                   "--models", "cnn", "--pruner", "none", "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main(["ensemble", str(run), "--method", "topk", "--max-members", "2", "--plain"]) == 0
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert len(members) == 2
    return run


def real_images(run: Path, n: int = 12) -> list[Path]:
    rd = RunDir(run)
    root = Path(rd.read_data_report()["root"])
    return [root / k for k in rd.read_final()["test_keys"][:n]]


def preprocess_from_json(paths: list[Path], meta: dict, size: int | None = None) -> np.ndarray:
    """What a user does with only the JSON beside the export: decode, resize, uint8 NCHW."""
    size = size or meta["image_size"]
    mode = "L" if meta["in_chans"] == 1 else "RGB"
    batch = []
    for p in paths:
        with Image.open(p) as img:
            img = ImageOps.exif_transpose(img).convert(mode)
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            arr = np.asarray(img, dtype=np.uint8)
        batch.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.stack(batch)


def feeds_from_json(paths: list[Path], meta: dict) -> dict[str, np.ndarray]:
    """One array per input the JSON lists, each decoded at that input's side."""
    return {i["name"]: preprocess_from_json(paths, meta, size=i["shape"][2]) for i in meta["inputs"]}


def test_onnx_ensemble_is_one_graph_that_onnxruntime_serves_with_the_json_alone(ensembled_run, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "ensemble.onnx"
    assert main(["export", str(ensembled_run), "--format", "onnx", "--model", "ensemble", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "verified with onnxruntime" in stdout
    meta = json.loads((tmp_path / "ensemble.onnx.preprocessing.json").read_text())
    members = json.loads((ensembled_run / "ensemble.json").read_text())["members"]
    assert meta["model"] == "ensemble" and len(meta["members"]) == len(members) >= 2
    sides = [i["shape"][2] for i in meta["inputs"]]
    assert meta["classes"] == [str(i) for i in range(10)] and meta["in_chans"] == 1
    assert sides[0] == 16 and meta["image_size"] == max(sides)  # trained at 16, some members average larger sides
    assert all({"mean", "std", "image_size", "weight"} <= set(m) for m in meta["members"])
    assert sorted({s for m in meta["members"] for s in m.get("average_over_sizes", [m["image_size"]])}) == sides
    assert meta["inputs"][0]["dtype"] == "uint8" and meta["output"]["name"] == "probabilities"
    assert meta["verified"]["max_abs_diff"] <= meta["verified"]["tolerance"] == 1e-4
    onnx.checker.check_model(onnx.load(str(out)))

    paths = real_images(ensembled_run)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds_from_json(paths, meta))[0]
    expected = automl_vision.load(str(ensembled_run), model="ensemble").predict_proba([str(p) for p in paths])
    assert got.shape == (len(paths), 10)
    np.testing.assert_allclose(got, expected, atol=meta["verified"]["tolerance"])
    # one image at a time works too (dynamic batch)
    one = session.run(None, feeds_from_json(paths[:1], meta))[0]
    np.testing.assert_allclose(one, expected[:1], atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_best_model_loads_with_torch_jit_and_matches(ensembled_run, tmp_path, capsys):
    import torch

    assert main(["export", str(ensembled_run), "--format", "torchscript", "--model", "best", "--out", str(tmp_path)]) == 0
    out = tmp_path / "best.pt"
    meta = json.loads((tmp_path / "best.pt.preprocessing.json").read_text())
    assert meta["file"] == "best.pt" and meta["verified"]["runtime"].startswith("torch.jit.load")
    loaded = torch.jit.load(str(out))
    paths = real_images(ensembled_run)
    with torch.no_grad():
        got = loaded(*[torch.from_numpy(a) for a in feeds_from_json(paths, meta).values()]).numpy()
    expected = automl_vision.load(str(ensembled_run), model="best").predict_proba([str(p) for p in paths])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_state_dict_rebuilds_from_its_json(ensembled_run, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from automl_vision.models import build_model

    out = tmp_path / "weights.safetensors"
    assert main(["export", str(ensembled_run), "--format", "state-dict", "--model", "best", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "weights.safetensors.preprocessing.json").read_text())
    arch = meta["architecture"]
    net = build_model(arch)
    net.load_state_dict(load_file(str(out)))
    net.eval()
    paths = real_images(ensembled_run)
    mean = torch.tensor(meta["input"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["input"]["std"]).view(1, -1, 1, 1)
    member = meta["members"][0]
    sides = member.get("average_over_sizes", [member["image_size"]])
    crops = member.get("average_over_crops")
    t = meta["temperature"]
    with torch.no_grad():
        ps, logits = [], None
        views = []  # as the JSON says: each side decoded from the original file, then the crops of one of them
        for side in sides:
            x = (torch.from_numpy(preprocess_from_json(paths, meta, size=side)).float() / 255.0 - mean) / std
            views.append(x)
            if crops and side == crops["of_size"]:
                c = crops["crop"]
                views += [x[:, :, top:top + c, left:left + c] for top, left in crops["top_left"]]
        assert len(views) == len(sides) + (crops["crops"] if crops else 0)
        for x in views:
            logits = net(x)
            flipped = torch.softmax(net(torch.flip(x, dims=[3])), 1) if meta["tta"] != "none" else None
            ps.append(torch.softmax(logits, 1) if flipped is None else 0.5 * (torch.softmax(logits, 1) + flipped))
        if meta["tta"] == "none" and len(sides) == 1:
            probs = torch.softmax(logits / t, dim=1)
        else:  # average (flips, then sides and crops), then the temperature on the average
            probs = torch.softmax(torch.log(sum(ps) / len(ps)) / t, dim=1)
    expected = automl_vision.load(str(ensembled_run), model="best").predict_proba([str(p) for p in paths])
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-4)


def test_export_bad_inputs_and_a_failed_check_leave_nothing(ensembled_run, tmp_path, capsys):
    assert main(["export", str(ensembled_run), "--format", "state-dict", "--model", "ensemble",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "holds one network" in capsys.readouterr().err
    assert main(["export", str(ensembled_run), "--format", "torchscript", "--out", str(tmp_path / "no" / "m.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing run"), "--format", "onnx"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    # a tolerance no export can meet: the check fails, and no file is left behind
    out = tmp_path / "strict"
    out.mkdir()
    assert main(["export", str(ensembled_run), "--format", "state-dict", "--model", "best",
                 "--out", str(out / "m.safetensors"), "--tolerance", "-1"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_an_ensemble_of_two_input_sizes_is_one_onnx_graph_with_two_inputs(ensembled_run, tmp_path):
    """Members trained at different resolutions: one uint8 input per size, same probabilities."""
    import torch

    from automl_vision.export import _export_onnx, _input_names, _run_onnx
    from automl_vision.models import build_model
    from automl_vision.predict import ProbabilityModel

    spec = json.loads((ensembled_run / "best" / "model.json").read_text())
    spec = {k: v for k, v in spec.items() if k not in ("eval_size", "eval_sizes")}  # each member at one side
    specs = [spec, {**spec, "image_size": 24, "mean": [0.3], "std": [0.25]}]
    torch.manual_seed(0)
    nets = [build_model(s).eval() for s in specs]
    module = ProbabilityModel(nets, specs, [0.7, 0.3], temperature=1.5, tta=True)
    assert module.sizes == [16, 24] and _input_names(module) == ["image_16px", "image_24px"]
    paths = real_images(ensembled_run, n=5)
    meta16, meta24 = {"image_size": 16, "in_chans": 1}, {"image_size": 24, "in_chans": 1}
    inputs = [torch.from_numpy(preprocess_from_json(paths, meta16)), torch.from_numpy(preprocess_from_json(paths, meta24))]
    with torch.no_grad():
        expected = module(*inputs).numpy()
    out = tmp_path / "two.onnx"
    _export_onnx(module, inputs, out)
    got = _run_onnx(out, _input_names(module), inputs)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_onnx_without_the_export_extra_names_the_install_command(ensembled_run, tmp_path):
    # onnxruntime as if not installed (None in sys.modules makes its import fail), as after a plain install
    code = ("import sys; sys.modules['onnxruntime'] = None; from automl_vision.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    import subprocess
    import sys

    from conftest import cli_env

    out = tmp_path / "model.onnx"
    proc = subprocess.run([sys.executable, "-c", code, "export", str(ensembled_run), "--format", "onnx", "--out",
                           str(out)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "--format onnx needs the optional package(s) onnxruntime: pip install 'automl-vision[export]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
