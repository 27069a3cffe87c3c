"""Each benchmark script runs from the command line in its ``--quick`` setting and writes its
results JSON with the figures the README's tables are made of.

No timing is asserted (benchmarks are not tests); what is checked is that a user who
runs a benchmark gets a complete, well-formed result file, with numbers where numbers
belong, and that a bad option is refused with a message instead of a traceback.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "AUTOML_VISION_DISABLE_ENTRYPOINTS": "1", "PYTHONUNBUFFERED": "1"},
    )


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_machine(m: dict) -> None:
    assert m["cores"] >= 1
    assert m["cpu"]
    assert "gpu" in m and m["date_utc"]


def check_engine(tmp_path, models: list[str]) -> None:
    out = tmp_path / "engine.json"
    proc = run_bench("bench_engine.py", "--quick", "--models", ",".join(models), "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert res["quick"] is True
    assert set(res["models"]) == set(models)
    for name, r in res["models"].items():
        for runner in ("automl_vision", "plain_loop"):
            s = r["summary"][runner]
            assert finite(s["wall_images_per_second"]["median"]) and s["wall_images_per_second"]["median"] > 0
            assert finite(s["train_images_per_second"]["median"])
            assert 0.0 <= s["val_accuracy"]["median"] <= 1.0
            assert len(r["runs"][runner]) == res["settings"]["reps"]
        assert finite(r["ratio_wall"]["median"]) and r["ratio_wall"]["median"] > 0
        assert isinstance(r["meets_target_0_95"], bool)
        fe = r["first_epoch"]
        assert fe["first_epoch_total_seconds"] >= fe["epoch1_seconds"] > 0
        assert finite(fe["later_epoch_median_seconds"])
    # the printed table is the one the README shows
    assert "| model | automl-vision img/s | plain loop img/s |" in proc.stdout


def test_engine_quick_writes_both_runners(tmp_path):
    check_engine(tmp_path, ["cnn"])


@pytest.mark.slow
def test_engine_quick_with_a_timm_backbone(tmp_path):
    check_engine(tmp_path, ["cnn", "resnet18"])


def test_engine_refuses_an_unknown_model(tmp_path):
    proc = run_bench("bench_engine.py", "--quick", "--models", "cnn,vgg99", "--out", tmp_path / "x.json", timeout=120)
    assert proc.returncode == 2
    assert "vgg99" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_data_pipeline_quick_reports_scaling_epochs_and_memory(tmp_path):
    out = tmp_path / "data.json"
    proc = run_bench("bench_data_pipeline.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert res["settings"]["jpeg_size"] == [500, 375]
    files = [r["files"] for r in res["decode_and_cache"]]
    assert files == sorted(files) and len(files) >= 2
    for r in res["decode_and_cache"]:
        assert r["cache_images_per_second"] > 0 and r["prepare_images_per_second"] > 0
    assert set(res["later_epochs"]) == {"decode JPEG every epoch", "cache (memory map)",
                                        "cache (in-memory tensor, as a trial)"}
    big = res["beyond_budget"]
    assert big["cache_mib"] > big["budget_mib"]  # the point: a cache larger than the budget
    for key in ("build_memory", "stream_epoch_memory", "trial_load_memory"):
        assert "peak_anon_mib_above_start" in big[key]


def check_search_quality(tmp_path, arms: list[str]) -> None:
    out = tmp_path / "search.json"
    proc = run_bench("bench_search_quality.py", "--quick", "--arms", ",".join(arms), "--out", out, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert set(res["datasets"]) == {"digits", "shapes"}
    for name, d in res["datasets"].items():
        # the split is fixed and shared: train/val/test sizes add up to the images
        assert sum(d["split_sizes"].values()) == d["images"]
        assert set(d["summary"]) == set(arms)
        for arm, runs in d["runs"].items():
            assert runs, f"{name}/{arm} has no run"
            for r in runs:
                assert "error" not in r, f"{name}/{arm}: {r.get('error')}"
                assert 0.0 <= r["best_val"] <= 1.0 and 0.0 <= r["test"] <= 1.0
                assert r["trials"] >= 1
            s = d["summary"][arm]
            assert s["failed"] == 0
            assert {"best_val", "test", "test_best_single", "time_to_target", "reached_target"} <= set(s)
        # a search's curve is the best-so-far validation value at each finished trial
        curve = d["runs"]["default"][0]["reached"]
        assert curve and all(b[1] >= a[1] and b[0] >= a[0] for a, b in zip(curve, curve[1:]))


def test_search_quality_quick_search_and_baseline_on_both_datasets(tmp_path):
    check_search_quality(tmp_path, ["default", "svc"])


@pytest.mark.slow
def test_search_quality_quick_every_arm(tmp_path):
    check_search_quality(tmp_path, ["default", "random", "no-pruning", "svc"])


def test_small_data_benchmark_quick(tmp_path):
    """The small-data benchmark: the search and the hand-written loops on a set with an eval folder."""
    out = tmp_path / "small.json"
    proc = run_bench("bench_small_data.py", "--quick", "--arms", "default,loop,loop_tv", "--out", out,
                     "--workdir", tmp_path / "work", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = res_small = json.loads(out.read_text())
    check_machine(res["machine"])
    assert res["quick"] is True and res["settings"]["arms"] == ["default", "loop", "loop_tv"]
    for name, ds in res["datasets"].items():
        arms = {r["arm"]: r for r in ds["runs"]}
        assert set(arms) == {"default", "loop", "loop_tv"}, name
        for arm, r in arms.items():
            assert 0.0 <= r["eval_accuracy"] <= 1.0 and r["eval_images"] > 0
            assert ds["summary"][arm]["runs"] == 1
            # the photos each arm missed, by name, so that two arms' misses can be compared
            assert len(r["eval_wrong"]) == r["eval_images"] - r["eval_correct"]
            assert all(not Path(f).is_absolute() and len(Path(f).parts) >= 2 for f in r["eval_wrong"])  # class/file
        shared = ds["summary"]["default"]["misses_shared_with_loop"]
        assert shared == [{"seed": arms["default"]["seed"], "search": len(arms["default"]["eval_wrong"]),
                           "loop": len(arms["loop"]["eval_wrong"]),
                           "both": len(set(arms["default"]["eval_wrong"]) & set(arms["loop"]["eval_wrong"]))}]
        for loop in ("loop", "loop_tv"):
            assert arms[loop]["epochs"] > 0 and finite(arms[loop]["images_per_second"])
            assert arms[loop]["total_seconds"] <= res["settings"]["budget_seconds"] + 5  # the budget includes loading
        # the torchvision-fed loop decodes every photo every epoch in its DataLoader's workers
        assert arms["loop_tv"]["workers"] == 2 and arms["loop_tv"]["full_epochs"] >= 1
        gap = arms["default"]["eval_accuracy"] - arms["loop_tv"]["eval_accuracy"]
        assert ds["summary"]["default"]["above_loop_tv"] == f"{int(gap > 0)}/1 (s0 {gap:+.3f})"
        assert arms["default"]["report"]["deliverable"] in ("best", "ensemble")
    bad = run_bench("bench_small_data.py", "--arms", "nope", "--quick")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr

    # the evaluation-resolution benchmark scores that finished run again at larger eval sizes
    runs = sorted((tmp_path / "work" / "runs").glob("*-default"))
    assert runs, list((tmp_path / "work").rglob("*"))[:20]
    res_out = tmp_path / "eval_resolution.json"
    proc = run_bench("bench_eval_resolution.py", "--data-root", tmp_path / "work" / "quick-data", "--factors", "1.25",
                     "--out", res_out, *runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(res_out.read_text())
    [row] = res["runs"]
    default = next(r for r in next(iter(res_small["datasets"].values()))["runs"] if r["arm"] == "default")
    # scoring as delivered is the deliverable's own: the same accuracy the small-data benchmark got with predict
    assert row["accuracy"]["delivered"] == pytest.approx(default["eval_accuracy"])
    assert set(row["accuracy"]) == {"plain", "delivered", "decode@1.25", "upsample@1.25", "average@1,1.25"}
    assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values())
    assert res["summary"]["upsample@1.25"]["runs"] == 1 and "| upsample@1.25 |" in res["markdown"]
    assert "| average@1,1.25 |" in res["markdown"]
    # the same question asked of the run's best trial networks on the run's own held-out photos
    held = tmp_path / "held_out.json"
    proc = run_bench("bench_eval_resolution.py", "--held-out", "--factors", "1.25", "--out", held, *runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(held.read_text())
    assert res["settings"]["held_out"] is True and 1 <= len(res["runs"]) <= 2
    splits = json.loads((runs[0] / "splits.json").read_text())["splits"]
    for r in res["runs"]:
        assert r["eval_images"] == len(splits["val"]) + len(splits["test"])
        assert set(r["accuracy"]) == {"plain", "decode@1.25", "upsample@1.25", "average@1,1.25"}
    bad = run_bench("bench_eval_resolution.py", "--factors", "0.5", "--eval", tmp_path, *runs)
    assert bad.returncode == 2 and "above 1" in bad.stderr and "Traceback" not in bad.stderr

    # and whether crops at prediction pay: the finished run's deliverable predicts with them (eval_crops)
    crops_out = tmp_path / "eval_crops.json"
    proc = run_bench("bench_eval_crops.py", "--data-root", tmp_path / "work" / "quick-data", "--out", crops_out, *runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(crops_out.read_text())
    [row] = res["runs"]
    assert set(row["right"]) == {"train_side", "sides", "sides+crops"} and row["photos"] == default["eval_images"]
    assert row["right"]["sides+crops"] == default["eval_correct"]  # as delivered: what predict scored
    assert res["summary"]["sides+crops"]["all"] == 1 and "| sides+crops |" in res["markdown"]
    held = tmp_path / "crops_held_out.json"
    proc = run_bench("bench_eval_crops.py", "--held-out", "--out", held, *runs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(held.read_text())
    assert res["settings"]["held_out"] is True and 1 <= len(res["runs"]) <= 2
    assert all(r["photos"] == len(splits["val"]) + len(splits["test"]) for r in res["runs"])
    bad = run_bench("bench_eval_crops.py", "--crops", "9", "--held-out", *runs)
    assert bad.returncode == 2 and "--crops" in bad.stderr and "Traceback" not in bad.stderr


def test_recipes_benchmark_quick(tmp_path):
    """Equal-time recipes: each trains the portfolio entry as overridden and is scored on the eval folder."""
    out = tmp_path / "recipes.json"
    proc = run_bench("bench_recipes.py", "--quick", "--recipes", "base,s96", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    assert res["quick"] is True and res["settings"]["entry"]
    assert [(r["recipe"], r["image_size"]) for r in res["runs"]] == [("base", 128), ("s96", 96)]
    for r in res["runs"]:
        assert 0.0 <= r["eval_accuracy"] <= 1.0 and 0.0 <= r["eval_accuracy_flip"] <= 1.0
        assert r["epochs"] >= 1 and r["seconds"] > 0
    assert set(res["summary"]) == {"base", "s96"} and res["summary"]["base"]["n"] == 1
    assert "| s96 |" in res["markdown"]
    bad = run_bench("bench_recipes.py", "--quick", "--recipes", "nope")
    assert bad.returncode == 2 and "unknown recipe" in bad.stderr and "Traceback" not in bad.stderr


def test_recipes_benchmark_splits_the_time_between_networks(tmp_path):
    """--networks K: K networks of different seeds share a recipe's time and their predictions are averaged."""
    out = tmp_path / "recipes.json"
    proc = run_bench("bench_recipes.py", "--quick", "--recipes", "base", "--networks", "2", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    run = res["runs"][0]
    assert res["settings"]["networks"] == 2 and run["networks"] == 2
    assert len(run["network_epochs"]) == 2 and all(e >= 1 for e in run["network_epochs"])
    assert len(run["network_eval_accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in run["network_eval_accuracy"])
    means = run["mean_eval_accuracy_of_k"]
    assert set(means) == {"1", "2"} and means["2"] == run["eval_accuracy"]
    assert means["1"] == sum(run["network_eval_accuracy"]) / 2
    assert "shared by 2 networks" in res["markdown"] and "average of k of its 2 networks: k=1" in res["markdown"]
    bad = run_bench("bench_recipes.py", "--quick", "--networks", "0")
    assert bad.returncode == 2 and "--networks" in bad.stderr and "Traceback" not in bad.stderr


def test_recipes_benchmark_compares_averages_across_sides(tmp_path):
    """--sides: networks at each side, each scored as predict scores it, and every average of --networks of
    them grouped by how many come from each side."""
    out = tmp_path / "sides.json"
    proc = run_bench("bench_recipes.py", "--quick", "--sides", "32,48", "--networks", "2", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    run = res["runs"][0]
    assert res["benchmark"] == "recipes_sides" and res["settings"]["sides"] == [32, 48]
    assert run["network_side"] == [32, 32, 48, 48] and all(e >= 1 for e in run["network_epochs"])
    assert run["averages_by_composition"] == {"2x32+0x48": 1, "1x32+1x48": 4, "0x32+2x48": 1}
    assert all(0.0 <= a <= 1.0 for a in run["mean_eval_accuracy_by_composition"].values())
    assert "| 1x32+1x48 |" in res["markdown"] and "32 px" in res["markdown"]
    bad = run_bench("bench_recipes.py", "--quick", "--sides", "64")
    assert bad.returncode == 2 and "--sides" in bad.stderr and "Traceback" not in bad.stderr


def test_recipes_benchmark_compares_averages_across_recipes(tmp_path):
    """--blend: networks of each recipe, scored as predict scores them, and every average of --networks of them
    grouped by how many come from each recipe; a single recipe or an unknown one is a usage error."""
    out = tmp_path / "blend.json"
    proc = run_bench("bench_recipes.py", "--quick", "--blend", "s64,s64_drop3", "--networks", "2", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    run = res["runs"][0]
    assert res["benchmark"] == "recipes_blend" and res["settings"]["variants"] == ["s64", "s64_drop3"]
    assert run["network_variant"] == ["s64", "s64", "s64_drop3", "s64_drop3"]
    assert run["averages_by_composition"] == {"2xs64+0xs64_drop3": 1, "1xs64+1xs64_drop3": 4, "0xs64+2xs64_drop3": 1}
    assert all(0.0 <= a <= 1.0 for a in run["mean_eval_accuracy_by_composition"].values())
    assert "| 1xs64+1xs64_drop3 |" in res["markdown"] and "`s64_drop3`" in res["markdown"]
    for bad_args in (["--blend", "s64"], ["--blend", "s64,nope"], ["--blend", "s64,s96", "--sides", "32,48"]):
        bad = run_bench("bench_recipes.py", "--quick", *bad_args)
        assert bad.returncode == 2 and "--blend" in bad.stderr and "Traceback" not in bad.stderr


def test_transfer_benchmark_starts_the_pretrained_arms_from_the_other_sets(tmp_path):
    """A source network learns the other sets' classes; the pretrained arms start from its weights (all but the
    classifier), the scratch arm from none; an unknown arm is a usage error."""
    out = tmp_path / "transfer.json"
    proc = run_bench("bench_transfer.py", "--quick", "--arms", "scratch,pretrained,backbone01", "--out", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    check_machine(res["machine"])
    pre = res["pretraining"]
    assert res["settings"]["set"] == "tiny-a" and pre["sources"] == ["tiny-b"] and pre["classes"] == 3
    assert pre["epochs"] >= 1 and 0.0 <= pre["held_out_accuracy"] <= 1.0
    assert [r["arm"] for r in res["runs"]] == ["scratch", "pretrained", "backbone01"]
    loaded = {r["arm"]: r["loaded_tensors"] for r in res["runs"]}
    assert loaded["scratch"] == 0 and loaded["pretrained"] == loaded["backbone01"] > 0
    assert all(0.0 <= r["eval_accuracy_flip"] <= 1.0 and r["epochs"] >= 1 for r in res["runs"])
    assert "| seed | scratch | pretrained | backbone01 |" in res["markdown"]
    bad = run_bench("bench_transfer.py", "--quick", "--arms", "scratch,nope")
    assert bad.returncode == 2 and "--arms" in bad.stderr and "Traceback" not in bad.stderr


def small_data_result(commit: str, runs: list[tuple[str, int, float, list[str]]]) -> dict:
    return {"benchmark": "small_data", "machine": {"cpu": "Some CPU", "cpu_features": ["avx2"], "git_commit": commit},
            "settings": {"budget": "10m"},
            "datasets": {"ants": {"runs": [{"arm": arm, "seed": seed, "eval_accuracy": acc, "eval_images": 100,
                                            "extra": extra, "git_commit": commit} for arm, seed, acc, extra in runs]}}}


def test_report_scoreboard_pairs_each_default_search_with_its_own_loop(tmp_path):
    """The README's per-budget scoreboard counts a search as above, level or below the loop of its own
    seed in its own file, leaves out searches run with forced options, and names the worst margin."""
    sys.path.insert(0, str(BENCH))
    import report

    text = report.scoreboard({
        "small_data_a": small_data_result("aaa1111", [("default", 0, 0.80, []), ("loop", 0, 0.75, []),
                                                      ("default", 1, 0.70, []), ("loop", 1, 0.73, []),
                                                      ("default", 2, 0.99, ["--image-size", "64"]), ("loop", 2, 0.50, [])]),
        "small_data_b": small_data_result("bbb2222", [("default", 0, 0.76, []), ("loop", 0, 0.76, []),
                                                      ("default", 3, 0.90, [])]),
    })
    assert "**10m, Some CPU (avx2)**" in text
    row = next(line for line in text.splitlines() if line.startswith("| ants |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # three paired runs: the forced --image-size run and the one without a loop of its seed are left out
    assert cells[1] == "3"
    assert cells[2] == "0.760" and cells[3] == "0.750"
    assert cells[4] == "1 above, 1 level, 1 below"
    assert cells[5] == "-0.030 (-3 photos)"
    assert cells[6] == "aaa1111, bbb2222"
    # the overview line above the tables counts the same three pairs and names the set that fell below
    total = next(line for line in text.splitlines() if line.startswith("| 10m | Some CPU (avx2) |"))
    assert [c.strip() for c in total.strip("|").split("|")][2:] == ["1", "3", "1 above, 1 level, 1 below", "ants"]


def test_report_scoreboard_keeps_instruction_set_capped_runs_apart(tmp_path, monkeypatch):
    """A run with the instruction set capped (ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY) computed like
    another CPU: the benchmark records the cap, and the scoreboard counts it in its own table, never
    with the host's own runs."""
    sys.path.insert(0, str(BENCH))
    import _common
    import report

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert _common.isa_limit() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    capped = small_data_result("ccc3333", [("default", 0, 0.70, []), ("loop", 0, 0.75, [])])
    capped["machine"]["isa_limit"] = _common.isa_limit()
    text = report.scoreboard({
        "small_data_a": small_data_result("aaa1111", [("default", 0, 0.80, []), ("loop", 0, 0.75, [])]),
        "small_data_capped": capped,
    })
    assert "**10m, Some CPU (avx2)**" in text
    assert "**10m, Some CPU (avx2) limited by ONEDNN_MAX_CPU_ISA=AVX2**" in text
    rows = [line for line in text.splitlines() if line.startswith("| ants |")]
    assert sorted(r.split("|")[5].strip() for r in rows) == ["0 above, 0 level, 1 below", "1 above, 0 level, 0 below"]


def test_prepare_subset_keeps_the_first_classes_and_their_eval_photos(tmp_path):
    """``--subset NAME=SOURCE:N:SEED:K`` builds a folder shaped like a hidden one (flowers12: 12 of
    flowers17's classes, 60 photos each): N train photos equally over the first K classes, only their
    eval photos, and the same photos on every rebuild."""
    sys.path.insert(0, str(BENCH))
    import prepare_small_data

    for part, per_class in (("train", 5), ("eval", 2)):
        for cls in ("c", "a", "b"):
            (tmp_path / "src" / part / cls).mkdir(parents=True)
            for i in range(per_class):
                (tmp_path / "src" / part / cls / f"{cls}{i}.jpg").write_bytes(b"x")
    picked = []
    for _ in range(2):
        prepare_small_data.write_subset(tmp_path, "sub=src:6:3:2", lambda s: None)
        picked.append(sorted(str(p.relative_to(tmp_path / "sub")) for p in (tmp_path / "sub").rglob("*.jpg")))
    assert picked[0] == picked[1]
    assert sorted(p.name for p in (tmp_path / "sub" / "train").iterdir()) == ["a", "b"]
    assert [len(list((tmp_path / "sub" / "train" / c).iterdir())) for c in ("a", "b")] == [3, 3]
    assert sorted(p for p in picked[0] if p.startswith("eval")) == ["eval/a/a0.jpg", "eval/a/a1.jpg",
                                                                    "eval/b/b0.jpg", "eval/b/b1.jpg"]
    with pytest.raises(SystemExit, match="NAME=SOURCE:N"):
        prepare_small_data.write_subset(tmp_path, "sub=src:6:x:2", lambda s: None)
