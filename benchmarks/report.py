"""Markdown tables of the latest results in ``benchmarks/results/*.json``.

``python benchmarks/report.py`` prints them; ``--write-readme`` puts them into
``benchmarks/README.md`` between the ``results:start`` and ``results:end`` markers (the
prose around them is written by hand, including what each figure means and where a
target is missed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
OWN = {"engine", "engine_photos", "search_quality", "data_pipeline"}


def cpu_text(m: dict[str, Any]) -> str:
    """The CPU's model name, with its vector extensions where the results recorded them."""
    feats = m.get("cpu_features")
    text = f"{m.get('cpu', '?')} ({', '.join(feats) if feats else 'none of avx2/avx512'})" if feats is not None else m.get("cpu", "?")
    # a run whose instruction set was capped (_common.ISA_LIMIT_VARS) computed like another CPU: its own group
    limit = m.get("isa_limit")
    return text + (" limited by " + ", ".join(f"{k}={v}" for k, v in sorted(limit.items())) if limit else "")


def machine_line(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    load = m.get("load_average_at_start")
    end = res.get("load_average_at_end")
    fmt = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    return (f"*{m.get('date_utc', '?')}; {m.get('cores', '?')} cores, {cpu_text(m)}, GPU: {m.get('gpu', '?')}; "
            f"torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} threads; load average (1/5/15 min) "
            f"{fmt(load)} at the start, {fmt(end)} at the end; commit {m.get('git_commit') or '?'}*")


def engine(res: dict[str, Any]) -> str:
    s = res["settings"]
    path = s["exec_path"]
    out = [machine_line(res), "",
           f"Data: {s['data']}, {s['n_train']} training / {s['n_val']} validation images at {s['image_size']} px; "
           f"batch {s['batch_size']}, {s['epochs']} epochs, {s['reps']} alternating repetitions per runner"
           f"{' after an untimed warm-up run of each' if s.get('warmup') else ''}; execution path "
           f"{path['device']}, {path['precision']}, {'channels-last' if path['channels_last'] else 'contiguous'}.", ""]
    rows = []
    for name, r in res["models"].items():
        av, pl = r["summary"]["automl_vision"], r["summary"]["plain_loop"]
        rows.append([name, av["wall_images_per_second"]["median"], pl["wall_images_per_second"]["median"],
                     f"**{r['ratio_wall']['median']:.3f}** ({r['ratio_wall']['min']:.3f}-{r['ratio_wall']['max']:.3f})",
                     r["ratio_train_phase"]["median"],
                     r["ratio_cpu_time"]["median"] if "ratio_cpu_time" in r else float("nan"), "yes" if r["meets_target_0_95"] else "**no**",
                     f"{av['val_accuracy']['median']:.3f} / {pl['val_accuracy']['median']:.3f}",
                     f"{av['peak_anon_mib']:.0f} / {pl['peak_anon_mib']:.0f}"])
    out.append(C.table(["model", "automl-vision img/s", "plain loop img/s", "ratio, median (range)",
                        "ratio, training phase only", "ratio, CPU time", ">= 0.95", "val acc (av / plain)",
                        "peak anon. MiB (av / plain)"], rows))
    out += ["", C.table(["model", "scan+decode+cache s", "cache -> tensors s", "epoch 1 s (train+val)",
                         "first epoch in all s", "later epoch s (median)"],
                        [[n, r["first_epoch"]["decode_and_cache_seconds"], r["first_epoch"]["cache_to_tensors_seconds"],
                          r["first_epoch"]["epoch1_seconds"], r["first_epoch"]["first_epoch_total_seconds"],
                          r["first_epoch"]["later_epoch_median_seconds"]] for n, r in res["models"].items()])]
    return "\n".join(out)


def rng(s: dict[str, Any], digits: int = 3) -> str:
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def search_quality(res: dict[str, Any]) -> str:
    s = res["settings"]
    budget = s.get("budget_seconds")
    opts = {k: v for k, v in (s.get("search_options") or {}).items() if v is not None and k != "time_budget"}
    head = f"Budget {budget:.0f} s per search" if budget else "No time budget (smoke setting)"
    head += f"; seeds {', '.join(map(str, s['seeds']))}; split {s['split']}"
    head += f"; search options {opts}." if opts else "; automl-vision's default search space."
    per_dataset = all("budget_seconds" in d for d in res["datasets"].values())
    out = [machine_line(res), "", f"Split {s['split']}." if per_dataset else head]
    for name, d in res["datasets"].items():
        if "budget_seconds" in d:
            b = d["budget_seconds"]
            la = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
            d_opts = {k: v for k, v in (d.get("search_options") or {}).items() if v is not None and k != "time_budget"}
            out += ["", f"{name}: run {d.get('date_utc', '?')}, " + (f"budget {b:.0f} s per search" if b else "no time budget")
                    + f", seed(s) {', '.join(map(str, d.get('seeds', [])))}"
                    + (f", search options {d_opts}" if d_opts else ", default search space")
                    + f"; load average {la(d.get('load_average_at_start'))} at the start, "
                    f"{la(d.get('load_average_at_end'))} at the end."]
        out += ["", f"**{name}** ({d['images']} images, {len(d['classes'])} classes; split "
                    f"{d['split_sizes']['train']}/{d['split_sizes']['val']}/{d['split_sizes']['test']}; "
                    f"time to reach validation accuracy {d['target_val_accuracy']}):", ""]
        rows = []
        for arm, sm in d["summary"].items():
            states = {}
            for r in d["runs"].get(arm, []):
                for k, v in (r.get("states") or {}).items():
                    states[k] = states.get(k, 0) + v
            label = arm + (f" ({sm['failed']} of {sm['seeds']} delivered nothing)" if sm.get("failed") else "")
            rows.append([label, rng(sm["best_val"]), rng(sm["test"]), rng(sm["test_best_single"]), rng(sm["trials"], 0),
                         ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())) or "-",
                         rng(sm["time_to_target"], 0), sm["reached_target"]])
        out.append(C.table(["arm", "best val acc", "test acc (deliverable)", "test acc (best single)", "trials",
                            "trial states (all seeds)", "time to target s", "seeds reaching it"], rows))
    return "\n".join(out)


def memory_rows(big: dict[str, Any]) -> list[list[Any]]:
    """Rows of the data pipeline's memory table (section 3 of ``bench_data_pipeline``)."""
    keys = ("peak_anon_mib_above_start", "peak_file_mib_above_start")
    rows = [[f"build a {big['cache_mib']} MiB cache ({big['files']} images at {big['image_size']} px; budget "
             f"{big['budget_mib']:.0f} MiB)", *(big["build_memory"].get(k) for k in keys)],
            ["stream one epoch from the memory map", *(big["stream_epoch_memory"].get(k) for k in keys)]]
    if "trial_subset_memory" in big:  # absent from results taken before trials could stream a split
        rows += [[f"a trial over its memory limit writes its training split ({big['trial_train_split_mib']} MiB) "
                  f"to its own file", *(big["trial_subset_memory"].get(k) for k in keys)],
                 [f"... and reads an epoch of shuffled, normalised batches from it ({big['trial_epoch_images_per_second']:.0f} img/s)",
                  *(big["trial_epoch_memory"].get(k) for k in keys)]]
    rows.append([f"a trial under its limit holds its training split ({big['trial_train_split_mib']} MiB)",
                 *(big["trial_load_memory"].get(k) for k in keys)])
    return rows


def data_pipeline(res: dict[str, Any]) -> str:
    s = res["settings"]
    out = [machine_line(res), "",
           f"Generated JPEGs {s['jpeg_size'][0]}x{s['jpeg_size'][1]} (mean {s['jpeg_mean_kb']:.0f} KB), cached at "
           f"{s['image_size']} px with {s['decode_threads']} decode threads; batch {s['batch_size']}.", ""]
    out.append(C.table(["files", "decode+cache img/s", "whole preparation img/s (scan, hash, decode, split)"],
                       [[r["files"], r["cache_images_per_second"], r["prepare_images_per_second"]]
                        for r in res["decode_and_cache"]]))
    out += ["", C.table(["later epoch from", "img/s (median)", "x decoding each epoch"],
                        [[k, v["median"], v["speedup_vs_decoding"]] for k, v in res["later_epochs"].items()])]
    big = res.get("beyond_budget") or {}
    if "build_memory" in big:
        out += ["", C.table(["step", "peak anonymous MiB", "peak file-backed MiB"], memory_rows(big))]
    if res.get("real_data"):
        r = res["real_data"]
        out += ["", f"Real data {r['data']}: {r['files']} files prepared in {r['prepare_seconds']:.1f} s "
                    f"({r['prepare_images_per_second']:.0f} images/s)."]
    return "\n".join(out)


def search_strategy(res: dict[str, Any]) -> str:
    """``bench_search_strategy.py`` (issue 4): median over seeds per arm, with the anytime curve."""
    s = res.get("settings", {})
    fr = list(next(iter(res["summary"].values()))["anytime_val"]) if res.get("summary") else []
    out = [machine_line(res), "", f"Data {s.get('data', '?')}, budget {s.get('budget', '?')} per search, seeds "
           f"{', '.join(map(str, s.get('seeds', [])))}{'; options ' + ' '.join(s['extra']) if s.get('extra') else ''}.", ""]
    out.append(C.table(["arm", "best val acc", "test acc", "trials", *[f"best val by {f} of the time" for f in fr]],
                       [[arm, rng(sm["best_val"]), rng(sm["test_accuracy"]), sm["trials"],
                         *[sm["anytime_val"][f] for f in fr]] for arm, sm in res["summary"].items()]))
    return "\n".join(out)


def other(name: str, res: dict[str, Any]) -> str:
    """Results of benchmarks written by others: their own Markdown when they ship it."""
    for key in ("markdown", "table_markdown", "tables_markdown", "report_markdown"):
        if isinstance(res.get(key), str):
            return (machine_line(res) + "\n\n" if "machine" in res else "") + res[key]
    keys = ", ".join(sorted(res)[:12])
    return f"See `results/{name}.json` (keys: {keys})."


def small_data(res: dict[str, Any]) -> str:
    import bench_small_data

    m = res.get("machine") or {}
    st = res.get("settings") or {}
    head = (f"Budget {st.get('budget')}, seeds {st.get('seeds')}, arms {', '.join(st.get('arms') or [])}; "
            f"{cpu_text(m)}, {m.get('cores', '?')} cores, {m.get('date_utc', '?')}, "
            f"load average at the end {res.get('load_average_at_end')}.")
    return head + "\n\n" + bench_small_data.table_text(res)


def tally(margins: list[float]) -> str:
    """Search-minus-loop accuracy margins counted as the scoreboard reads them (level: equal accuracy)."""
    above, level = sum(d > 0 for d in margins), sum(d == 0 for d in margins)
    return f"{above} above, {level} level, {len(margins) - above - level} below"


def scoreboard(results: dict[str, dict[str, Any]]) -> str:
    """Every paired run of the small-data benchmark in one table per budget and CPU: the default
    search with no extra options against the hand-written loop of the same seed in the same
    results file. The per-experiment tables below hold each file's own runs, forced options included;
    this one answers the issue's question (above the loop on every set?) over all of them, and says
    which commits ran, because the runs span several versions of the search."""
    import bench_small_data

    groups: dict[tuple[str, str], dict[str, list[tuple[float, float, str, int]]]] = {}
    for name in sorted(results):
        res = results[name]
        budget = str((res.get("settings") or {}).get("budget"))
        machine = res.get("machine") or {}
        cpu = cpu_text(machine) + ("" if machine.get("cpu_features") is not None else " (extensions not recorded)")
        for set_name, entry in (res.get("datasets") or {}).items():
            runs = [r for r in entry.get("runs") or [] if bench_small_data.ok(r)]
            loops = {r["seed"]: r for r in runs if r["arm"] == "loop"}
            for r in runs:
                if r["arm"] != "default" or r.get("extra") or r["seed"] not in loops:
                    continue
                commit = str(r.get("git_commit") or machine.get("git_commit") or "?")
                pair = (r["eval_accuracy"], loops[r["seed"]]["eval_accuracy"], commit, int(r.get("eval_images") or 0))
                groups.setdefault((budget, cpu), {}).setdefault(set_name, []).append(pair)
    if not groups:
        return "(no paired runs yet)"
    parts = [overview(groups)]
    for (budget, cpu), sets in sorted(groups.items()):
        rows = []
        for set_name, pairs in sorted(sets.items()):
            margins = [a - b for a, b, _, _ in pairs]
            # the worst margin in photos of the evaluation folder, the unit in which a tie is read
            worst = min(pairs, key=lambda q: q[0] - q[1])
            photos = round((worst[0] - worst[1]) * worst[3]) if worst[3] else None
            commits = ", ".join(dict.fromkeys(c for _, _, c, _ in pairs))
            rows.append([set_name, len(pairs), f"{C.median([a for a, _, _, _ in pairs]):.3f}",
                         f"{C.median([b for _, b, _, _ in pairs]):.3f}",
                         tally(margins),
                         f"{min(margins):+.3f}" + (f" ({photos:+d} photo{'' if abs(photos) == 1 else 's'})" if photos is not None else ""), commits])
        parts.append(f"**{budget}, {cpu}**\n\n" + C.table(
            ["set", "paired runs", "search median", "loop median", "search against its loop", "worst margin",
             "commits"], rows))
    return "\n\n".join(parts)


def overview(groups: dict[tuple[str, str], dict[str, list[tuple[float, float, str, int]]]]) -> str:
    """One line per budget and CPU over every set of the tables below it: how many paired runs, how
    many of them above, level with and below their own loop, and which sets were ever below (the
    README's summary of other CPUs quotes these lines)."""
    rows = []
    for (budget, cpu), sets in sorted(groups.items()):
        margins = {name: [a - b for a, b, _, _ in pairs] for name, pairs in sets.items()}
        every = [d for ds in margins.values() for d in ds]
        below_sets = sorted(name for name, ds in margins.items() if any(d < 0 for d in ds))
        rows.append([budget, cpu, len(sets), len(every), tally(every), ", ".join(below_sets) or "none"])
    return C.table(["budget", "CPU", "sets", "paired runs", "search against its loop", "sets below it at least once"], rows)


RENDER = {"search_strategy": search_strategy, "engine": engine, "engine_photos": engine, "engine_1thread": engine, "search_quality": search_quality, "search_quality_3min": search_quality, "data_pipeline": data_pipeline}
TITLES = {
    "engine": "1. Engine overhead (digits)",
    "engine_photos": "1b. Engine overhead (photos)",
    "engine_1thread": "1c. Engine overhead, one torch thread (`--threads 1`; less disturbed by other processes)",
    "search_quality": "2. Search quality per budget",
    "search_quality_3min": "2c. Search quality on photos in 3 minutes (the budget of the shared photos' hand-written reference)",
    "data_pipeline": "4. Data pipeline",
    "search_strategy": "2b. Search strategy: warm-start portfolio vs TPE vs random (bench_search_strategy.py)",
    "parallel": "3. Parallel scaling and storage overhead (bench_parallel.py)",
}


def render(results_dir: Path) -> str:
    parts = []
    files = sorted(results_dir.glob("*.json"))
    order = ["engine", "engine_1thread", "engine_photos", "search_quality", "search_quality_3min", "search_strategy", "parallel"]
    names = [n for n in order if (results_dir / f"{n}.json").exists()]
    names += [f.stem for f in files if f.stem not in names and f.stem != "data_pipeline"]
    if (results_dir / "data_pipeline.json").exists():
        names.append("data_pipeline")
    # each file read once: the scoreboard and the per-file tables share what was read
    loaded: dict[str, dict[str, Any] | Exception] = {}
    for name in names:
        try:
            loaded[name] = json.loads((results_dir / f"{name}.json").read_text())
        except (OSError, ValueError) as exc:
            loaded[name] = exc
    small = {n: r for n, r in loaded.items() if n.startswith("small_data_") and isinstance(r, dict)}
    board = False
    for name in names:
        if name.startswith("small_data_") and not board:
            board = True
            parts.append("### 5. Small real-photo folders: every paired run, per budget and CPU\n\n" + scoreboard(small))
        res = loaded[name]
        if isinstance(res, Exception):
            parts.append(f"### {name}\n\n(unreadable: {res})")
            continue
        title = TITLES.get(name) or (f"{TITLES['search_strategy']}: `results/{name}.json`" if name.startswith("search_strategy")
                                     else f"5. Small real-photo folders, {name[len('small_data_'):]}: the default "
                                          "search against a hand-written loop" if name.startswith("small_data_")
                                     else name.replace("_", " ").capitalize())
        try:
            fn = RENDER.get(name) or (search_strategy if name.startswith("search_strategy") else
                                      small_data if name.startswith("small_data") else None)
            body = fn(res) if fn else other(name, res)
        except (KeyError, TypeError, ValueError) as exc:
            body = f"(could not render `results/{name}.json`: {type(exc).__name__}: {exc})"
        flag = " (smoke setting: figures mean nothing)" if res.get("quick") else ""
        parts.append(f"### {title}{flag}\n\n{body}")
    return "\n\n".join(parts) if parts else "(no results yet: run `bash benchmarks/run_all.sh`)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(C.RESULTS), help="folder of results JSON files")
    ap.add_argument("--write-readme", action="store_true", help="replace the tables in benchmarks/README.md")
    args = ap.parse_args(argv)
    text = render(Path(args.results))
    if args.write_readme:
        readme = C.ROOT / "benchmarks" / "README.md"
        doc = readme.read_text()
        if START not in doc or END not in doc:
            print(f"{readme}: markers {START} / {END} not found", file=sys.stderr)
            return 2
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"tables written into {readme}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
