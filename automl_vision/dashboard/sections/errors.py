"""Errors and explanations: confusion matrix, per-class metrics, the most confidently wrong
test images, and a Grad-CAM overlay showing which pixels drove a model's decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import NotAvailable, RunData, confusion, per_class_table, probability_kind
from automl_vision.rundir import MODEL_JSON, TEST_LABELS, WEIGHTS, final_probs, read_json

GALLERY_PX = 112


@st.cache_resource(max_entries=4, show_spinner="loading the trial's model…")
def _model(trial_dir: str, mtime: float):
    # the model loader rebuilds the architecture through its plugin and reads safetensors only
    from automl_vision.models import load_model

    return load_model(trial_dir)


def _show(img: np.ndarray, px_size: int = GALLERY_PX) -> np.ndarray:
    """Nearest-neighbour upscaling so that 16-32 px images stay visible, grey as RGB."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    k = max(1, px_size // max(img.shape[:2]))
    return img.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else img


def _model_name(run: RunData, trial: int) -> str:
    row = run.leaderboard[run.leaderboard["number"] == trial]
    return "" if row.empty else str(row.iloc[0].get("model") or "")


def explain(run: RunData, trial: int, image: np.ndarray, target: int | None):
    from automl_vision.explain import grad_cam, overlay, to_input

    tdir = run.rd.trial_dir(trial)
    model, spec = _model(str(tdir), (tdir / WEIGHTS).stat().st_mtime)
    sal = grad_cam(model, to_input(image, spec["mean"], spec["std"]), target=target)
    k = max(1, 224 // max(image.shape[:2]))
    return sal, overlay(image, sal.cam, scale=k), spec


def body() -> None:
    run = ui.current_run()
    st.title("Errors and explanations")
    final = run.final_or_raise()
    classes = run.classes
    which = "best"
    if (run.rd.final_dir / final_probs("test", "ensemble")).is_file() and final.get("deliverable") == "ensemble":
        which = "ensemble"
    which = st.radio("Model", ["best", "ensemble"], index=["best", "ensemble"].index(which), horizontal=True,
                     format_func=lambda w: f"best single model (trial #{final.get('best_trial')})" if w == "best" else "ensemble",
                     key="err_model")
    probs, labels = run.test_arrays(which)
    kind = probability_kind(final, which)
    st.caption(f"On the held-out test split: {len(labels)} images, accuracy {(probs.argmax(1) == labels).mean():.4f}. "
               f"Probabilities on this page are the {'ensemble' if which == 'ensemble' else 'best model'}'s as "
               f"delivered: {kind} (final/test_probs_{which}.npy).")

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Confusion matrix")
        normalise = st.toggle("Show row percentages", key="cm_norm",
                              help="each row as percentages of that true class's test images (its recall on the diagonal)")
        cm = confusion(labels, probs)
        names = classes if len(classes) == cm.shape[0] else [str(i) for i in range(cm.shape[0])]
        if normalise:
            shown = 100.0 * cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
            fig = px.imshow(shown, x=names, y=names, color_continuous_scale="Blues", zmin=0, zmax=100, aspect="auto",
                            labels=dict(x="predicted", y="true", color="% of row"))
            fig.update_traces(texttemplate="%{z:.0f}%", hovertemplate="true %{y}, predicted %{x}: %{z:.1f}%<extra></extra>")
            fig.update_coloraxes(colorbar_ticksuffix="%")
        else:
            fig = px.imshow(cm, x=names, y=names, text_auto=True, color_continuous_scale="Blues", aspect="auto",
                            labels=dict(x="predicted", y="true", color="images"))
        fig.update_layout(height=120 + 32 * len(names), margin=dict(l=10, r=10, t=10, b=10),
                          xaxis_type="category", yaxis_type="category")
        st.plotly_chart(fig, width="stretch", key="cm")
    with right:
        st.subheader("Per-class precision, recall, F1")
        st.dataframe(per_class_table(labels, probs, classes).style.format("{:.3f}", subset=["precision", "recall", "f1"]),
                     hide_index=True, width="stretch")

    st.subheader("Most confidently wrong test images")
    short = probability_kind(final, which, short=True)
    st.caption(f"Each caption's percentage is the predicted class's probability as delivered ({kind}).")
    n = st.slider("How many", 4, 48, 12, step=4, key="gallery_n")
    wrong = run.confidently_wrong(which, top=n)
    if wrong.empty:
        st.success("The model got every test image right.")
    else:
        cols = st.columns(6)
        for i, r in enumerate(wrong.itertuples()):
            with cols[i % 6]:
                try:
                    img = run.image(r.key)
                    st.image(_show(img), caption=f"true {r.true} → predicted {r.predicted} ({r.confidence:.0%}, {short})")
                except NotAvailable as exc:
                    st.caption(f"{r.key}: {exc}")
                st.caption(f"`{r.key}`")

    st.divider()
    gradcam(run, final, wrong, which, probs)


def gradcam(run: RunData, final: dict, wrong: pd.DataFrame, which: str, delivered: np.ndarray) -> None:
    st.subheader("Grad-CAM: which pixels drove the decision")
    trials = run.model_trials()
    if not trials:
        st.info("No trial with saved weights in this run directory: Grad-CAM needs a trained model.")
        return
    classes = run.classes
    best = final.get("best_trial")
    c1, c2, c3 = st.columns([2, 3, 2])
    trial = c1.selectbox("Trial", trials, index=trials.index(best) if best in trials else 0, key="cam_trial",
                         format_func=lambda t: f"#{t} " + _model_name(run, t))
    source = c2.radio("Image", ["a confidently wrong test image", "any test image", "upload an image"],
                      key="cam_source", horizontal=True)
    keys = list(final.get("test_keys") or run.split_keys("test"))
    if source == "upload an image":
        up = c2.file_uploader("Image file", type=["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"],
                              key="cam_upload")
        if up is None:
            st.info("Upload an image to explain it.")
            return
        key = up.name
    else:
        options = list(wrong["key"]) if source.startswith("a confidently") and not wrong.empty else keys
        if not options:
            st.info("No test image to choose from.")
            return
        key = c2.selectbox("Test image", options, key=f"cam_key_{source[:3]}")
    target_name = c3.selectbox("Explain the class", ["predicted"] + classes, key="cam_target")
    spec_path = run.rd.trial_dir(trial) / MODEL_JSON
    spec = read_json(spec_path) or {}
    size, chans = int(spec.get("image_size", 32)), int(spec.get("in_chans", 3))
    if source == "upload an image":
        from PIL import Image

        from automl_vision.data.images import ImageDecodeError, decode

        try:
            with Image.open(up) as pil:
                image = decode(pil, size, chans)
        except (ImageDecodeError, OSError, ValueError) as exc:
            st.error(f"{up.name}: cannot use this file as an image: {exc}")
            return
    else:
        image = run.image(key, size, chans)
    target = None if target_name == "predicted" else classes.index(target_name)
    from automl_vision.explain import ExplainError
    from automl_vision.types import UsageError

    try:
        sal, over, spec = explain(run, trial, image, target)
    except (ExplainError, UsageError) as exc:
        st.warning(f"Cannot explain trial #{trial}: {exc}")
        return
    names = spec.get("classes") or classes
    top = np.argsort(-sal.probs)[:3]
    from automl_vision.explain import colour_bar

    if sal.note:
        st.info(f"Grad-CAM layer: {sal.note}.")
    if sal.empty:
        st.warning(f"No part of the image raised the score of class {names[sal.target]}: the map is empty (the "
                   "network sees no positive evidence for this class here), so the overlay shows no colour.")
    a, b, c = st.columns([2, 2, 3])
    # the same width for both, so that a pixel of the map lies over the same pixel of the image
    a.image(_show(image, 224), caption=f"{Path(key).name} at {size} px (as the model sees it)", use_container_width=True)
    b.image(over, caption=f"Grad-CAM for class {names[sal.target]}", use_container_width=True)
    b.image(colour_bar(), caption="colour scale: least (left, dark blue) to most (right, dark red) contribution",
            use_container_width=True)
    truth = ""
    if key in keys and run.final and (run.rd.final_dir / TEST_LABELS).is_file():
        y = np.load(run.rd.final_dir / TEST_LABELS, allow_pickle=False)
        idx = keys.index(key)
        truth = f"**True class:** {names[int(y[idx])]}  \n" if idx < len(y) else ""
    c.markdown(truth + f"**Trial #{trial}'s top classes** (raw softmax of its network, one pass: no calibration, "
               "no TTA):  \n" + "  \n".join(f"{names[i]}: {sal.probs[i]:.1%}" for i in top))
    if key in keys and (trial == final.get("best_trial") or which == "ensemble"):
        idx = keys.index(key)
        if idx < len(delivered):
            who = "ensemble" if which == "ensemble" else "best model"
            c.markdown(f"**As delivered** ({who}: {probability_kind(final, which)}, as in the gallery):  \n"
                       + "  \n".join(f"{names[i]}: {delivered[idx, i]:.1%}" for i in np.argsort(-delivered[idx])[:3]))
    c.caption(f"Explained class: {names[sal.target]}. Dark red marks the pixels whose features raised this class's "
              f"score most, dark blue those that did not (Turbo colour scale, above; layer `{sal.layer}`, a "
              f"{sal.grid[0]}×{sal.grid[1]} grid upsampled "
              "to the image).")


ui.page(body, live=False)
