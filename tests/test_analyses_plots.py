"""The analyses' figures render from the analyses' own tables, with chance lines and distinct baselines."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from cbmir import plots
from cbmir.analyses import index_size, levels, retrieval

LABELS = ["CT/lung/a", "CT/lung/b", "MR/brain/c", "MR/brain/d", "XR/chest/e"]


def problem(n_rows: int = 120, k: int = 10):
    rng = np.random.default_rng(0)
    labels = rng.choice(LABELS, n_rows).astype(object)
    cases = np.array([f"p{int(c)}" for c in rng.integers(0, 30, n_rows)], dtype=object)
    split = rng.random(n_rows) < 0.7
    ir, qr = np.flatnonzero(split), np.flatnonzero(~split)
    ids = {m: np.stack([rng.permutation(ir)[:k] for _ in qr]) for m in ("enc", "raw-pixels")}
    return ids, qr, ir, labels, cases


def test_curves_levels_index_size_and_classes_render(tmp_path):
    ids, qr, ir, labels, cases = problem()
    curves = pd.concat(
        [
            retrieval.precision_curves(v, qr, ir, labels, cases, n_boot=20).assign(model=m)
            for m, v in ids.items()
        ]
    )
    fig = plots.curves_with_chance(curves, baselines=["raw-pixels"], title="t")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["raw-pixels"].get_linestyle() == "--" and lines["enc"].get_linestyle() == "-"
    assert "chance" in lines and np.allclose(lines["chance"].get_ydata(), curves["chance_micro"].iloc[:10])
    assert ax.get_legend() is None and fig.legends  # legend outside the axes
    assert plots.save_figure(fig, tmp_path / "curves").exists()

    region = np.array(["/".join(x.split("/")[:2]) for x in labels], dtype=object)
    lv = pd.concat(
        [
            levels.level_precision(v, qr, ir, {"region": region, "label": labels}, cases, n_boot=20).assign(
                model=m
            )
            for m, v in ids.items()
        ]
    )
    part = lv[lv["N"] == 1]
    fig = plots.bars_with_chance(
        part,
        x="model",
        y="micro",
        hue="level",
        low="micro_lo",
        high="micro_hi",
        chance="chance_micro",
        baselines=["raw-pixels"],
    )
    # each bar's chance: a tick across it and a diamond drawn over the axis, so a chance near 0 stays visible
    marks = [line for line in fig.axes[0].get_lines() if line.get_marker() == "D" and len(line.get_xdata())]
    assert len(marks) == 2 and all(not m.get_clip_on() for m in marks)
    np.testing.assert_allclose(marks[0].get_ydata(), part[part["level"] == "region"]["chance_micro"])
    ticks = [
        c.get_segments()
        for c in fig.axes[0].collections
        if len(c.get_segments()) == len(marks[0].get_xdata())
    ]
    assert any(np.allclose([s[0][1] for s in t], marks[0].get_ydata()) for t in ticks)
    assert [t.get_text() for t in fig.legends[0].get_texts()].count("chance") == 1
    plots.save_figure(fig, tmp_path / "levels")

    def search(rows, k):
        return np.stack([rows[:k] for _ in qr])

    size = pd.concat(
        [
            index_size.index_size_study(
                search, qr, ir, labels, cases, fractions=(0.5, 1.0), repeats=2, n_boot=10, progress=False
            ).assign(model=m)
            for m in ids
        ]
    )
    fig = plots.index_size_curves(size, baselines=["raw-pixels"])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert len(fig.axes) == 3 and lines["raw-pixels"].get_linestyle() == "--"
    np.testing.assert_array_equal(
        lines["chance"].get_xdata(), lines["enc"].get_xdata()
    )  # same x: index cases
    part = size[(size["model"] == "enc") & (size["N"] == 1) & (size["metric"] == "plain P@N")]
    part = part[part["average"] == "micro"].sort_values("index_cases")
    np.testing.assert_allclose(lines["enc"].get_xdata(), part["index_cases"])
    np.testing.assert_allclose(lines["chance"].get_ydata(), part["chance"])
    np.testing.assert_allclose(
        lines["ceiling (highest reachable)"].get_ydata(), part["ceiling"]
    )  # drawn once
    assert "ceiling (highest reachable)" in lines and not any(
        label.startswith("ceiling (highest reachable) (") for label in lines
    )
    plots.save_figure(fig, tmp_path / "size")

    classes = retrieval.per_class(ids["enc"], qr, ir, labels, cases, n_boot=10)
    best, worst = retrieval.best_worst(classes, "P@1", n=10)
    fig = plots.best_worst_bars(best, worst, "P@1")
    shown = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert len(shown) == len(set(shown)) == len(classes.dropna(subset=["P@1"]))
    notes = [t.get_text() for t in fig.axes[0].texts]
    first = best.iloc[0]
    assert notes[
        0
    ] == f"{first['P@1']:.3f}; {first['n_queries']} quer{'y' if first['n_queries'] == 1 else 'ies'}, " + (
        f"{first['n_cases']} case{'' if first['n_cases'] == 1 else 's'}"
    )
    plots.save_figure(fig, tmp_path / "classes")
    plt.close("all")


def test_each_model_keeps_one_look_in_every_figure_of_a_run():
    from matplotlib.colors import to_rgb

    run = ["raw-pixels", "random-vit", "litemedsam", "dinov2-s14-imgfocus", "xception-imagenet"]
    full = plots.model_styles(run, order=run)
    # a subset, in another order, gets the same looks as in the full list
    part = plots.model_styles(["xception-imagenet", "raw-pixels"], order=run)
    assert part == {m: full[m] for m in part}
    encoders = [m for m in run if not plots.is_baseline(m)]
    colours = [to_rgb(full[m]["color"]) for m in encoders]
    assert len(set(colours)) == len(encoders)
    assert all(len(set(c)) > 1 for c in colours)  # no encoder is grey
    a, b = full["raw-pixels"], full["random-vit"]
    for look in (a, b):
        r, g, bl = to_rgb(look["color"])
        assert r == g == bl  # greys
    assert a["color"] != b["color"] and a["linestyle"] != b["linestyle"]
    assert a["marker"] != b["marker"] and a["hatch"] != b["hatch"]
    assert plots.is_baseline("raw-pixels:16") and not plots.is_baseline("litemedsam")

    # the run's order, once recorded, is what every figure uses
    plots.set_model_order(run)
    try:
        ids, qr, ir, labels, cases = problem()
        curves = pd.concat(
            [
                retrieval.precision_curves(ids["enc"], qr, ir, labels, cases, n_boot=5).assign(model=m)
                for m in ("xception-imagenet", "random-vit")
            ]
        )
        fig = plots.curves_with_chance(curves)
        lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
        for m in ("xception-imagenet", "random-vit"):
            assert to_rgb(lines[m].get_color()) == to_rgb(full[m]["color"])
            assert lines[m].get_marker() == full[m]["marker"]
        plt.close(fig)
        table = pd.DataFrame(
            {
                "model": ["litemedsam", "raw-pixels"],
                "region": ["r", "r"],
                "share": [0.5, 0.4],
                "chance": [0.3, 0.3],
            }
        )
        fig = plots.bars_with_chance(table, x="region", y="share", hue="model")
        bars = fig.axes[0].patches
        assert to_rgb(bars[0].get_facecolor()[:3]) == to_rgb(full["litemedsam"]["color"])
        assert bars[1].get_hatch() == full["raw-pixels"]["hatch"] and not bars[0].get_hatch()
        plt.close(fig)
    finally:
        plots.set_model_order([])


def test_keys_of_the_umap_grid_and_learning_curves_are_readable():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "model": np.repeat(["a", "b"], 30),
            "x": rng.random(60),
            "y": rng.random(60),
            "modality": rng.choice(["CT", "MR"], 60),
            "label": rng.choice([f"c{i}" for i in range(14)], 60),
        }
    )
    fig = plots.umap_grid(frame, levels=("modality", "label"))
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert sizes and min(sizes) >= 9
    plt.close(fig)
    curves = pd.DataFrame(
        {
            "model": "a",
            "epoch": [1, 2, 3],
            "train_loss": [2, 1, 0.5],
            "selection_loss": [2, 1.5, 1.6],
            "selection_accuracy": [0.2, 0.4, 0.3],
        }  # fmt: skip
    )
    fig = plots.learning_curves(curves, {"a": 2})
    sizes = [t.get_fontsize() for t in fig.axes[0].get_legend().get_texts()]
    assert sizes and min(sizes) >= 9
    # losses on a log axis: a first epoch far above the rest does not flatten the later ones
    assert fig.axes[0].get_yscale() == "log"
    fig.canvas.draw()
    ticks = [
        t.get_text()
        for minor in (False, True)
        for t in fig.axes[0].get_yticklabels(minor=minor)
        if t.get_text()
    ]
    assert len(ticks) >= 2 and all(float(t) > 0 for t in ticks)  # plain numbers (0.5, 1, 2), not 2x10^0
    plt.close(fig)


def test_precision_curves_leave_out_bands_that_would_hide_each_other():
    ids, qr, ir, labels, cases = problem()
    one = retrieval.precision_curves(ids["enc"], qr, ir, labels, cases, n_boot=10)
    for n_models, banded in ((plots.MAX_BANDS, True), (plots.MAX_BANDS + 1, False)):
        curves = pd.concat([one.assign(model=f"m{i}") for i in range(n_models)])
        fig = plots.curves_with_chance(curves, title="All models")
        bands = [c for ax in fig.axes for c in ax.collections if c.get_label() != "chance"]
        assert (len(bands) == 2 * n_models) if banded else not bands
        title = fig._suptitle.get_text()
        want = (
            "(bands: 95 % CI over cases)"
            if banded
            else f"(no bands for {n_models} models, more than {plots.MAX_BANDS}; intervals in the tables)"
        )
        assert title.startswith("All models") and want in title
        plt.close(fig)


def test_count_bars_uses_a_log_axis_when_counts_span_orders_of_magnitude():
    from cbmir import plots

    skewed = pd.DataFrame({"label": ["a", "b", "c"], "images": [13, 2_000, 226_000]})
    even = pd.DataFrame({"label": ["a", "b", "c"], "images": [10, 12, 14]})
    assert plots.count_bars(skewed, x="label").axes[0].get_xscale() == "log"
    assert plots.count_bars(even, x="label").axes[0].get_xscale() == "linear"
    assert plots.count_bars(skewed, x="label", log=False).axes[0].get_xscale() == "linear"


def test_intervals_are_drawn_from_their_bounds_even_when_they_exclude_the_estimate():
    """A percentile interval of a macro average can lie wholly above its estimate (small classes drop out of
    resamples, as at the paper's 161 classes): both plots draw it as given instead of failing."""
    table = pd.DataFrame(
        {"model": ["a", "b"], "level": ["label", "label"], "head": ["kNN", "kNN"], "f1": [0.34, 0.76],
         "lo": [0.40, 0.70], "hi": [0.48, np.nan], "chance": [0.01, 0.01]}
    )  # fmt: skip
    for fig in (
        plots.bars_with_chance(table, x="model", y="f1", hue="head", low="lo", high="hi", chance="chance"),
        plots.level_scores(table, "f1", lo="lo", hi="hi", chance="chance"),
    ):
        lines = [c for c in fig.axes[0].collections if c.get_segments() and c.get_label() != "chance"]
        vertical = [seg for c in lines for seg in c.get_segments() if seg[0][0] == seg[1][0]]
        assert [(seg[0][1], seg[1][1]) for seg in vertical] == [(0.40, 0.48)]  # b's NaN bound: not drawn
        plt.close(fig)


def test_count_bars_draws_many_labels_as_ranked_counts_of_readable_size():
    rng = np.random.default_rng(0)
    names = [f"M/r{i // 10}/c{i}" for i in range(161)]
    sizes = np.round(np.geomspace(226_000, 13, 161)).astype(int)
    counts = pd.concat(
        [
            pd.DataFrame(
                {"label": names, "split": s, "images": (sizes * f).astype(int) + rng.integers(0, 2, 161)}
            )
            for s, f in (("train", 0.8), ("test", 0.2))
        ]  # fmt: skip
    ).assign(cases=lambda d: d["images"] // 3)
    fig = plots.count_bars(
        counts,
        x="label",
        hue="split",
        values=("images", "cases"),
        hue_order=["train", "test"],
        title="Images per label",
    )
    height_px = fig.get_size_inches()[1] * fig.dpi
    assert height_px < 600 and len(fig.axes) == 2  # not 161 bars: 0.28 in per bar would be 4,500 px
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    largest = ax.get_lines()[0].get_ydata()  # train counts in rank order of the total
    assert largest[0] == counts[(counts.split == "train")]["images"].max()
    assert {t.get_text() for t in ax.texts} >= {names[0], names[-1]}  # the extremes are named
    assert "161 labels, ranked" in fig._suptitle.get_text()
    few = plots.count_bars(counts[counts.label.isin(names[:12])], x="label", hue="split")
    assert len(few.axes[0].patches) >= 12  # few labels: still bars


def test_best_worst_bars_draw_an_interval_that_misses_its_estimate_as_it_is():
    part = pd.DataFrame({"class": ["a", "b"], "P@1": [0.3, 0.6], "P@1_lo": [0.4, 0.5], "P@1_hi": [0.5, 0.7],
                         "n_queries": 30, "n_cases": 10})  # fmt: skip
    fig = plots.best_worst_bars(part.iloc[[1]], part.iloc[[0]], "P@1")  # an error bar would be negative here
    spans = [seg for c in fig.axes[1].collections for seg in c.get_segments() if seg[0][1] == seg[1][1]]
    assert any(np.allclose([seg[0][0], seg[1][0]], [0.4, 0.5]) for seg in spans)
    plt.close("all")


def test_a_scatter_of_many_points_is_rasterised_inside_its_svg(tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame({"model": "m", "x": rng.normal(size=n), "y": rng.normal(size=n),
                          "modality": rng.choice(list("ABCDEFGHIJKLMN"), n)})  # fmt: skip
    plots.save_figure(plots.umap_grid(frame, levels=("modality",)), tmp_path / "umap")
    svg = (tmp_path / "umap.svg").read_text()
    assert "<image" in svg and svg.count("<use") < 100  # the points are one image, not 20,000 markers
    assert (tmp_path / "umap.svg").stat().st_size < 400_000


def test_a_head_key_shows_its_colour_and_each_baseline_its_hatch():
    df = pd.DataFrame({"model": ["raw-pixels", "raw-pixels", "litemedsam", "litemedsam"], "head": ["kNN", "probe"] * 2,
                       "f1": [0.3, 0.2, 0.5, 0.5], "chance": 0.06})  # fmt: skip
    fig = plots.bars_with_chance(df, x="model", y="f1", hue="head", baselines=["raw-pixels"])
    key = {
        t.get_text(): h
        for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)
    }
    assert not key["kNN"].get_hatch() and not key["probe"].get_hatch()
    assert (
        key["raw-pixels"].get_hatch() == plots.model_styles(["raw-pixels"])["raw-pixels"]["hatch"]
        and "chance" in key
    )
    assert fig.axes[0].patches[0].get_hatch()  # the raw-pixels bars themselves are hatched
    plt.close(fig)


def test_count_ticks_read_as_counts_at_a_million_rows():
    assert [plots.compact_count(v) for v in (1, 100, 9999, 135992, 679995, 1359990)] == [
        "1",
        "100",
        "9999",
        "136 k",
        "680 k",
        "1.36 M",
    ]
    fig, ax = plt.subplots()
    ax.plot([135992, 1359990], [0.5, 0.6])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plots._COUNT_TICKS)
    ax.set_xticks([135992, 1359990])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["136 k", "1.36 M"]
    plt.close(fig)


def test_many_grouped_bars_wrap_onto_rows_of_readable_width():
    regions = [f"XR/region_{i:02d}" for i in range(16)]
    models = [f"model-{j}" for j in range(9)]
    table = pd.DataFrame(
        [
            {"region": r, "model": m, "share": 0.5 + 0.01 * j, "chance": 0.1, "lo": 0.4, "hi": 0.6}
            for r in regions
            for j, m in enumerate(models)
        ]
    )
    fig = plots.bars_with_chance(table, x="region", y="share", hue="model", low="lo", high="hi")
    per_row = plots.MAX_BARS_PER_ROW // len(models)
    assert len(fig.axes) == -(-len(regions) // per_row)  # rows of at most per_row regions
    assert fig.get_size_inches()[0] < 30
    drawn = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]  # every region once, in order
    assert drawn == regions
    heights = [p.get_height() for ax in fig.axes for p in ax.patches if np.isfinite(p.get_height())]
    assert len(heights) == len(regions) * len(models)
    keys = [t.get_text() for t in fig.legends[0].get_texts()]
    assert keys == [*models, "chance"]
    plt.close(fig)


def test_figures_draw_no_interval_for_rows_with_too_few_cases():
    table = pd.DataFrame({"model": ["a", "b", "c"], "f1": [0.5, 0.6, 0.7], "lo": [0.1, 0.5, 0.6],
                          "hi": [0.9, 0.7, 0.8], "chance": 0.1, "cases": [2, 5, 40]})  # fmt: skip
    fig = plots.bars_with_chance(table, x="model", y="f1", low="lo", high="hi", chance="chance")
    spans = [
        c
        for c in fig.axes[0].collections
        if len(c.get_segments()) and c.get_segments()[0][0][0] == c.get_segments()[0][1][0]
    ]
    xs = sorted({round(s[0][0], 6) for c in spans for s in c.get_segments() if s[0][1] != s[1][1]})
    assert xs == [1.0, 2.0]  # the vertical interval lines: none at bar 0 (2 cases)
    plt.close(fig)


def test_index_size_share_figure_plots_the_judged_share_between_chance_and_ceiling():
    study = pd.DataFrame({"model": "a", "metric": "plain P@N", "average": "micro", "N": 10,
                          "index_cases": [4.0, 10.0, 20.0], "estimate": [0.2, 0.3, 0.35], "low": [0.1, 0.2, 0.3],
                          "high": [0.3, 0.4, 0.4], "chance": [0.1, 0.1, 0.1], "ceiling": [0.5, 0.6, 0.7],
                          "share": [0.25, 0.4, 0.42], "share_low": [-0.2, 0.2, 0.3], "share_high": [0.5, 0.6, 0.5],
                          "n_cases": 30})  # fmt: skip
    fig = plots.index_size_curves(study, share=True)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["a"].get_ydata(), study["share"])
    np.testing.assert_allclose(lines["chance"].get_ydata(), 0.0)
    np.testing.assert_allclose(lines["ceiling (highest reachable)"].get_ydata(), 1.0)
    assert fig.axes[0].get_ylim()[0] < -0.2  # a band below chance stays in view
    assert "share of the room" in fig.axes[0].get_ylabel()
    plt.close(fig)
    raw = plots.index_size_curves(study)
    np.testing.assert_allclose(
        {ln.get_label(): ln for ln in raw.axes[0].get_lines()}["a"].get_ydata(), study["estimate"]
    )
    plt.close(raw)


def test_precision_curves_print_the_chance_value_beside_its_line():
    ids, qr, ir, labels, cases = problem()
    curves = retrieval.precision_curves(ids["enc"], qr, ir, labels, cases, n_boot=10).assign(model="enc")
    fig = plots.curves_with_chance(curves)
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes == [
        f"chance {curves['chance_micro'].iloc[-1]:.3f}",
        f"chance {curves['chance_macro'].iloc[-1]:.3f}",
    ]
    plt.close(fig)
