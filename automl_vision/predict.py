"""Predicting with a finished run: the deliverable model as one probability module.

Every consumer of a trained model (the final evaluation, :class:`Predictor`, the
``predict`` command and ``export``) goes through :class:`ProbabilityModel`: it takes
``uint8`` images ``(N, C, H, W)`` exactly as :func:`automl_vision.data.images.decode`
produces them, normalises them with each member's mean and std, runs the member,
optionally averages with the horizontally flipped image (test-time augmentation),
takes the weighted soft vote of the members and applies the temperature fitted on
validation. Because the run's own test evaluation, the Python API and the exported
graphs all run this one module, they give the same probabilities.

Preprocessing (also in ``docs/prediction-and-export.md``): an image is opened with
Pillow, EXIF orientation applied, converted to greyscale (``L``) or ``RGB`` (alpha
composited on white), resized to the model's square size with bilinear resampling,
and kept as ``uint8``. A network trained on random-resized crops is given each image at the
sides of its ``eval_sizes`` (its training side and a little larger, each decoded from the
original) and its probabilities are averaged, with those of ``eval_crops`` crops of its training
side cut from the largest of those images (the centre and the four corners); else the side is ``eval_size`` when
``model.json`` has one, or ``image_size``. The module divides by 255 and normalises per channel.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from automl_vision.data.images import ImageDecodeError, decode
from automl_vision.models import crop_offsets, crop_views, input_sizes
from automl_vision.rundir import MODEL_JSON, DamagedRunFileError, RunDir, open_run, path_inside, read_model_spec
from automl_vision.types import UsageError

MODEL_CHOICES = "auto, best, ensemble or trial:N"


class ProbabilityModel(nn.Module):
    """``uint8`` images -> class probabilities of one model or a weighted ensemble.

    ``forward`` takes one ``uint8`` tensor ``(N, C, S, S)`` per distinct input size
    :attr:`sizes`, each decoded from the original image, and returns ``float32``
    probabilities ``(N, K)``. A member whose ``model.json`` has ``eval_sizes`` (trained on
    random-resized crops) averages its probabilities over those sides; other members take
    their one side (``eval_size`` or ``image_size``). A member with ``eval_crops`` also averages
    over that many crops of its training side, cut from its largest side's input inside the
    module (no further input), every view weighted alike.

    Args:
        models: the member networks (eval mode), each mapping normalised ``float32``
            images to logits.
        specs: each member's ``model.json`` content (image size, mean, std).
        weights: each member's weight in the soft vote; normalised to sum to one.
        temperature: probabilities ``p`` become ``softmax(log(p) / T)``; 1 leaves them.
        tta: average each member's probabilities with those of the flipped image.
    """

    def __init__(self, models: Sequence[nn.Module], specs: Sequence[dict[str, Any]], weights: Sequence[float],
                 temperature: float = 1.0, tta: bool = False):
        super().__init__()
        if not models:
            raise ValueError("a probability model needs at least one member")
        self.members = nn.ModuleList(models)
        # a member trained on random-resized crops averages its predictions over a few sides
        # around its training side (eval_sizes): one input per distinct side of all members
        self.sizes: list[int] = sorted({side for s in specs for side in input_sizes(s)})
        self.inputs_of = [[self.sizes.index(side) for side in input_sizes(s)] for s in specs]
        # (input index, crop side, offsets) of a member's crops, or None (models.crop_views)
        self.crops_of: list[tuple[int, int, list[tuple[int, int]]] | None] = []
        for s in specs:
            n, side, crop = crop_views(s)
            self.crops_of.append((self.sizes.index(side), crop, crop_offsets(side, crop, n)) if n else None)
        self.in_chans = int(specs[0]["in_chans"])
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.temperature = float(temperature)
        self.tta = bool(tta)
        for i, s in enumerate(specs):
            c = int(s["in_chans"])
            self.register_buffer(f"mean_{i}", torch.tensor(list(s["mean"])[:c], dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer(f"std_{i}", torch.tensor(list(s["std"])[:c], dtype=torch.float32).view(1, c, 1, 1))
        self.eval()

    def _view(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor:
        q = torch.softmax(member(x).float(), dim=1)
        if self.tta:
            q = 0.5 * (q + torch.softmax(member(torch.flip(x, dims=[3])).float(), dim=1))
        return q

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        single = len(self.members) == 1 and not self.tta and len(self.inputs_of[0]) == 1 and self.crops_of[0] is None
        total = None
        for i, member in enumerate(self.members):
            p = None
            views = 0
            crops = self.crops_of[i]
            for j in self.inputs_of[i]:
                x = images[j].float() / 255.0
                x = (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")
                if single:
                    # one model at one side: temperature on the logits, exactly softmax(z / T)
                    return torch.softmax(member(x).float() / self.temperature, dim=1)
                q = self._view(member, x)
                views += 1
                if crops is not None and j == crops[0]:
                    c = crops[1]
                    for top, left in crops[2]:
                        q = q + self._view(member, x[:, :, top:top + c, left:left + c])
                        views += 1
                p = q if p is None else p + q
            p = (self.weights[i] / views) * p
            total = p if total is None else total + p
        if self.temperature != 1.0:
            total = torch.softmax(torch.log(total.clamp_min(1e-30)) / self.temperature, dim=1)
        return total

    @torch.no_grad()
    def probs(self, arrays: Sequence[np.ndarray], batch_size: int = 128, device: str | torch.device = "cpu",
              channels_last: bool = False) -> np.ndarray:
        """Probabilities (``float64``) of ``uint8`` ``(N, H, W, C)`` arrays, one per size in :attr:`sizes`."""
        n = int(arrays[0].shape[0])
        device = torch.device(device)
        self.to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = []
        for i in range(0, n, batch_size):
            xs = [torch.from_numpy(np.ascontiguousarray(a[i : i + batch_size])).permute(0, 3, 1, 2).to(device)
                  .contiguous(memory_format=fmt) for a in arrays]
            out.append(self(*xs).float().cpu().numpy())
        if not out:
            return np.zeros((0, 0))
        return np.concatenate(out).astype(np.float64)


# --------------------------------------------------------------------- loading
@dataclass
class Deliverable:
    """A loaded model choice: the probability module and where it came from."""

    module: ProbabilityModel
    kind: str  # "best", "ensemble" or "trial:N"
    classes: list[str]
    specs: list[dict[str, Any]]
    members: list[dict[str, Any]] = field(default_factory=list)  # {"trial", "weight", "dir"}

    def describe(self) -> str:
        extra = []
        if self.module.tta:
            extra.append("flip TTA")
        if any(len(sides) > 1 for sides in self.module.inputs_of):
            extra.append("averaged over " + "/".join(map(str, self.module.sizes)) + " px")
        crops = {len(c[2]) for c in self.module.crops_of if c is not None}
        if crops:
            extra.append(f"and {'/'.join(map(str, sorted(crops)))} crops")
        if self.module.temperature != 1.0:
            extra.append(f"temperature {self.module.temperature:.3g}")
        tail = f" ({', '.join(extra)})" if extra else ""
        if self.kind == "ensemble":
            parts = ", ".join(f"trial {m['trial']} x{m['weight']:.2f}" for m in self.members)
            if any(s.get("final_fit") for s in self.specs):
                parts += ", each trained further on every labelled image (final fit)"
            return f"ensemble of {len(self.members)} models: {parts}{tail}"
        if self.kind == "best":
            return f"best single model: trial {self.specs[0].get('trial')} ({self.specs[0].get('label', '')}){tail}"
        return f"{self.kind} ({self.specs[0].get('label', '')}){tail}"


def _no_model_message(rd: RunDir) -> str:
    done = [int(r["number"]) for r in rd.usable_trials()]
    if not done:
        return (f"{rd.path}: no trial of this run has finished, so there is no model to use. Run the search again "
                "with more time or trials (--time-budget, --n-trials); finished trials are kept.")
    return (f"{rd.path}: the search has not written its final model yet (it may still be running). Build it now with "
            f"'automl-vision ensemble {rd.path}', or pick a finished trial with --model trial:N "
            f"(finished: {', '.join(map(str, done))}).")


def resolve_choice(rd: RunDir, model: str) -> str:
    """``auto`` -> ``best`` or ``ensemble`` as the final report chose; checks the others."""
    model = (model or "auto").strip()
    if model == "auto":
        ens = rd.read_ensemble()
        if ens and ens.get("selected") and rd.best_dir.joinpath(MODEL_JSON).exists():
            return "ensemble"
        return "best"
    if model in ("best", "ensemble"):
        return model
    if model.startswith("trial:") and model[6:].strip().isdigit():
        return f"trial:{int(model[6:])}"
    raise UsageError(f"--model {model!r}: expected {MODEL_CHOICES}")


def load_member(directory: Path, pm=None, run: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """One saved model, its ``model.json`` checked first; ``run`` (run.json) names the plugins the search
    used, for the message when the model's family is not available here."""
    from automl_vision.models import load_model
    from automl_vision.plugins import get_plugin_manager, require_registered

    spec = read_model_spec(directory)
    if spec is None:
        raise UsageError(f"{directory}: no model.json; this trial did not finish or the run is incomplete")
    pm = pm or get_plugin_manager()
    require_registered(pm, run or {}, "model_families", spec["family"], str(directory / MODEL_JSON))
    try:
        return load_model(directory, pm)
    except RuntimeError as exc:  # load_state_dict: a tensor shaped unlike what model.json describes
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise DamagedRunFileError(directory / MODEL_JSON, f"does not match weights.safetensors ({detail})") from None


def load_deliverable(run_dir: str | os.PathLike, model: str = "auto", pm=None) -> Deliverable:
    """Load the chosen model of a run (``auto``, ``best``, ``ensemble`` or ``trial:N``).

    Raises:
        UsageError: the run directory is missing, has no finished trial, or the choice
            does not exist in it.
    """
    rd = open_run(run_dir)
    run = rd.read_run() or {}
    choice = resolve_choice(rd, model)
    if choice.startswith("trial:"):
        n = int(choice[6:])
        done = [int(r["number"]) for r in rd.usable_trials()]
        if n not in done:
            raise UsageError(f"--model {choice}: trial {n} did not finish in {rd.path} "
                             f"(finished trials: {', '.join(map(str, done)) or 'none'})")
        net, spec = load_member(rd.trial_dir(n), pm, run)
        return Deliverable(ProbabilityModel([net], [spec], [1.0]), choice, list(spec["classes"]), [spec],
                           [{"trial": n, "weight": 1.0, "dir": str(rd.trial_dir(n).relative_to(rd.path))}])
    if not (rd.best_dir / MODEL_JSON).exists():
        raise UsageError(_no_model_message(rd))
    if choice == "best":
        net, spec = load_member(rd.best_dir, pm, run)
        module = ProbabilityModel([net], [spec], [1.0], temperature=float(spec.get("temperature") or 1.0),
                                  tta=bool(spec.get("tta")))
        return Deliverable(module, "best", list(spec["classes"]), [spec],
                           [{"trial": spec.get("trial"), "weight": 1.0, "dir": "best"}])
    ens = rd.read_ensemble()
    if not ens or not ens.get("members"):
        raise UsageError(f"{rd.path}: no ensemble.json; build one with 'automl-vision ensemble {rd.path}'")
    nets, specs, weights, members = [], [], [], []
    for m in ens["members"]:
        d = path_inside(rd.path, m.get("dir") or str(rd.trial_dir(m["trial"]).relative_to(rd.path)),
                        rd.ensemble)
        if not (d / MODEL_JSON).exists():
            raise UsageError(f"{rd.path}: ensemble member trial {m['trial']} has no model in {d}; rebuild the ensemble "
                             f"with 'automl-vision ensemble {rd.path}'")
        net, spec = load_member(d, pm, run)
        nets.append(net)
        specs.append(spec)
        weights.append(float(m["weight"]))
        members.append({"trial": m["trial"], "weight": float(m["weight"]), "dir": str(d.relative_to(rd.path))})
    classes = list(specs[0]["classes"])
    module = ProbabilityModel(nets, specs, weights, temperature=float(ens.get("temperature") or 1.0),
                              tta=bool(ens.get("tta")))
    return Deliverable(module, "ensemble", classes, specs, members)


# --------------------------------------------------------------------- images
ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray


def _as_list(images: Any) -> list[Any]:
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"images: expected paths, PIL images or numpy arrays, got {type(images).__name__}")


def _describe(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({item})"
    return f"image {index} ({type(item).__name__})"


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a file"


def decode_input(item: Any, size: int, in_chans: int) -> np.ndarray:
    """One path, PIL image or ``uint8`` array -> ``uint8`` ``(size, size, in_chans)``."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.exists():
            raise ImageDecodeError("no such file")
        if path.is_dir():
            raise ImageDecodeError("is a directory")
        if not path.is_file():
            # opening a named pipe would wait forever for a writer; a device would read without end
            raise ImageDecodeError(f"not a regular file ({_file_kind(path)}); skipped")
        try:
            return decode(path, size, in_chans)
        except PermissionError as exc:
            raise ImageDecodeError(f"unreadable: {exc.strerror or exc}") from exc
    if isinstance(item, Image.Image):
        return decode(item, size, in_chans)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise ImageDecodeError(
                f"array of dtype {item.dtype} and shape {item.shape}: expected a uint8 image (H, W), (H, W, 1), "
                "(H, W, 3) or (H, W, 4), as Pillow or imageio return it"
            )
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        return decode(item, size, in_chans)
    raise ImageDecodeError(f"unsupported input type {type(item).__name__}; give a path, a PIL image or a uint8 array")


def decode_batch(items: Sequence[Any], sizes: Sequence[int], in_chans: int, threads: int | None = None
                 ) -> tuple[list[np.ndarray], list[int], dict[int, str]]:
    """Decode ``items`` at every size: (arrays per size, indices decoded, {index: reason})."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: Any) -> tuple[list[np.ndarray] | None, str | None]:
        try:
            return [decode_input(item, s, in_chans) for s in sizes], None
        except ImageDecodeError as exc:
            return None, str(exc)
        except (OSError, ValueError) as exc:
            return None, f"unreadable: {exc}"

    threads = threads or max(1, min(8, os.cpu_count() or 1))
    ok: list[int] = []
    errors: dict[int, str] = {}
    per_size: list[list[np.ndarray]] = [[] for _ in sizes]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, (arrs, err) in enumerate(pool.map(one, items)):
            if err is not None:
                errors[i] = err
                continue
            ok.append(i)
            for k, a in enumerate(arrs):
                per_size[k].append(a)
    arrays = [np.stack(a) if a else np.zeros((0, s, s, in_chans), np.uint8) for a, s in zip(per_size, sizes)]
    return arrays, ok, errors


# --------------------------------------------------------------------- public API
class Predictor:
    """A finished run's model, ready to predict (see :func:`automl_vision.load`).

    Example:
        >>> import automl_vision
        >>> predictor = automl_vision.load("runs/digits")           # doctest: +SKIP
        >>> predictor.predict(["a.png", "b.png"])                    # doctest: +SKIP
        ['3', '7']
        >>> predictor.predict_proba("a.png").shape                   # doctest: +SKIP
        (1, 10)

    Attributes:
        classes: class names, in the column order of :meth:`predict_proba`.
        kind: ``"best"``, ``"ensemble"`` or ``"trial:N"``.
        sizes: the sides each image is decoded at (several when a model averages its
            predictions over a few sides, ``eval_sizes``, or ensemble members differ).
        image_size: the largest of :attr:`sizes`.
        in_chans: 1 (greyscale) or 3 (colour).
    """

    def __init__(self, deliverable: Deliverable, device: str = "cpu", batch_size: int = 64,
                 run_dir: RunDir | None = None, pm=None):
        self.deliverable = deliverable
        self.run_dir = run_dir  # leaderboard() and fit_summary() read it
        self._pm = pm  # the plugins evaluate() reads labelled data with
        self.module = deliverable.module
        self.classes = list(deliverable.classes)
        self.kind = deliverable.kind
        self.sizes = list(self.module.sizes)
        self.image_size = max(self.sizes)
        self.in_chans = self.module.in_chans
        self.batch_size = batch_size
        from automl_vision.training.device import resolve_device

        self.device = resolve_device(device)
        self.module.to(self.device)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, model: str = "auto", device: str = "cpu", batch_size: int = 64,
                 plugins: list[str] | None = None) -> "Predictor":
        """Open ``run_dir`` with ``model`` = ``auto`` (the run's deliverable), ``best``,
        ``ensemble`` or ``trial:N``. Raises :class:`~automl_vision.types.UsageError`.

        ``plugins`` are plugin modules or ``.py`` files to load (``--plugin``); the ones the
        run's ``run.json`` names are never imported from it, only matched against what is
        loaded (see :func:`automl_vision.plugins.run_plugin_manager`).
        """
        from automl_vision.plugins import run_plugin_manager

        rd = open_run(run_dir)
        pm = run_plugin_manager(rd.read_run() or {}, plugins)
        return cls(load_deliverable(rd.path, model, pm), device=device, batch_size=batch_size, run_dir=rd, pm=pm)

    @property
    def classes_(self) -> np.ndarray:
        """The class names as scikit-learn spells it (``predict_proba``'s column order)."""
        return np.asarray(self.classes)

    def _run(self) -> RunDir:
        if self.run_dir is None:
            raise UsageError("this predictor was not opened from a run directory (use automl_vision.load(RUN_DIR))")
        return self.run_dir

    def leaderboard(self):
        """Every trial of the run, best first, as a pandas DataFrame (the ``leaderboard`` command's rows)."""
        from automl_vision import leaderboard as lb

        rd = self._run()
        direction = ((rd.read_run() or {}).get("directions") or ["maximize"])[0]
        return lb.ranked(lb.build(rd), direction).reset_index(drop=True)

    def fit_summary(self) -> dict[str, Any]:
        """The search's final report (``final/report.json``: docs/run-directory.md lists its keys)."""
        from automl_vision.rundir import read_json

        return read_json(self._run().report) or {}

    def evaluate(self, data: str | os.PathLike) -> dict[str, Any]:
        """Score the model on new labelled images: a folder of class folders (or any location a
        dataset source reads, e.g. a CSV manifest), whose class names are the run's.

        Returns:
            ``{"n": images scored, "metrics": {name: value} (every registered metric),
            "per_class": [{class, precision, recall, f1, support}], "confusion_matrix":
            rows = true class, "classes": [...], "skipped": [{"path", "reason"}]}``.

        Raises:
            UsageError: the location cannot be read, or it has a class the model does not know.
        """
        from automl_vision.data.sources import load_dataset
        from automl_vision.evaluation import compute_metrics, per_class
        from automl_vision.plugins import get_plugin_manager

        pm = self._pm or get_plugin_manager()
        dataset = load_dataset(str(data), pm)
        unknown = sorted(set(dataset.classes) - set(self.classes))
        if unknown:
            raise UsageError(f"{data}: class(es) {', '.join(unknown)} are not among the model's classes "
                             f"({', '.join(self.classes)})")
        items = [s.path if s.path is not None else s.array for s in dataset.samples]
        arrays, ok, errors = decode_batch(items, self.sizes, self.in_chans)
        index = {c: i for i, c in enumerate(self.classes)}
        y = np.asarray([index[dataset.classes[dataset.samples[i].label]] for i in ok], dtype=np.int64)
        probs = self.probs_of_arrays(arrays)
        skipped = list(dataset.skipped) + [{"path": _describe(items[i], i), "reason": why} for i, why in errors.items()]
        if not len(y):
            raise UsageError(f"{data}: no usable labelled image to evaluate on")
        detail = per_class(y, probs, self.classes)
        return {"n": int(len(y)), "metrics": compute_metrics(y, probs, pm), **detail, "classes": list(self.classes),
                "skipped": skipped}

    def describe(self) -> str:
        """One line: which model this is (members, TTA, temperature)."""
        return self.deliverable.describe()

    def probs_of_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities of already decoded ``uint8`` ``(N, S, S, C)`` arrays, one per size."""
        if int(arrays[0].shape[0]) == 0:
            return np.zeros((0, len(self.classes)))
        return self.module.probs(arrays, batch_size=self.batch_size, device=self.device)

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities ``(N, K)`` (``float64``, rows sum to one).

        Args:
            images: a path, a PIL image, a ``uint8`` array ``(H, W)`` / ``(H, W, C)``,
                a ``uint8`` batch ``(N, H, W, C)``, or a list of these.

        Raises:
            ValueError: an image cannot be read; the message names it and says why.
        """
        items = _as_list(images)
        arrays, _ok, errors = decode_batch(items, self.sizes, self.in_chans)
        if errors:
            first = min(errors)
            raise ValueError(
                f"{len(errors)} of {len(items)} images cannot be used; {_describe(items[first], first)}: {errors[first]}"
            )
        return self.probs_of_arrays(arrays)

    def predict(self, images: Any) -> list[str]:
        """The most likely class name of each image (see :meth:`predict_proba`)."""
        probs = self.predict_proba(images)
        return [self.classes[i] for i in probs.argmax(axis=1)]
