"""Figures of the report. Every function returns a matplotlib Figure; `save_figure` writes PNG and SVG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from cbmir.tables import few_cases  # noqa: E402

DPI = 100  # modest resolution keeps the committed figures small
IMAGE_DPI = 72  # figures made of thumbnails: about their native size, saved as a 256-colour PNG
sns.set_theme(style="whitegrid", context="notebook")
matplotlib.rcParams["svg.hashsalt"] = "cbmir"  # stable element ids: re-rendered SVGs do not change needlessly


def save_figure(fig: plt.Figure, stem: Path, images: bool = False) -> Path:
    """Write `<stem>.png` and `<stem>.svg`, close the figure, return the PNG path.

    `images=True` for figures made of pictures (galleries): saved at thumbnail resolution, PNG palettised.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.with_suffix(".png")
    dpi = IMAGE_DPI if images else DPI
    fig.savefig(png, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(stem.with_suffix(".svg"), dpi=dpi, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    if images:
        with Image.open(png) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(png, optimize=True)
    return png


LOG_COUNT_SPAN = 100  # count_bars switches to a log axis when counts span more than this factor
MAX_BARS = (
    40  # count_bars draws more categories than this as ranked counts (161 labels would be 4,500 px tall)
)


def _log_axis(values: pd.Series, log: bool | None) -> bool:
    positive = values[values > 0]
    return bool(log or (log is None and len(positive) and positive.max() > LOG_COUNT_SPAN * positive.min()))


def count_bars(
    counts: pd.DataFrame,
    x: str,
    hue: str | None = None,
    title: str = "",
    values: Sequence[str] = ("images",),
    hue_order: Sequence[str] | None = None,
    log: bool | None = None,
) -> plt.Figure:
    """Horizontal bars of counts, one panel per column of `values` (`counts` has columns x, [hue], *values);
    the key sits right of the last panel. `log` (default: when the positive counts span more than 100x, as
    13 to 226,000 images per class do) draws the count axis on a log scale so small classes stay visible.
    More than `MAX_BARS` categories are drawn as ranked counts instead (`count_ranks`)."""
    n = counts[x].nunique()
    if n > MAX_BARS:
        return count_ranks(counts, x, hue, title, values, hue_order, log)
    fig, axes = plt.subplots(
        1, len(values), figsize=(7 * len(values), max(2.0, 0.28 * n + 1)), squeeze=False, sharey=True
    )
    for i, (ax, value) in enumerate(zip(axes[0], values, strict=True)):
        last = i == len(values) - 1
        sns.barplot(
            data=counts,
            y=x,
            x=value,
            hue=hue,
            hue_order=hue_order,
            ax=ax,
            orient="h",
            legend=bool(last and hue),
        )
        if _log_axis(counts[value], log):
            ax.set_xscale("log")
            value = f"{value} (log scale)"
        ax.set_xlabel(value)
        ax.set_ylabel("")
        if last and hue:
            sns.move_legend(ax, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def count_ranks(
    counts: pd.DataFrame,
    x: str,
    hue: str | None = None,
    title: str = "",
    values: Sequence[str] = ("images",),
    hue_order: Sequence[str] | None = None,
    log: bool | None = None,
) -> plt.Figure:
    """Counts of many categories (e.g. 161 labels) as one line per `hue` value against the category's rank by
    its total (1 = largest), one panel per column of `values`; the largest and smallest categories are named.
    The per-category numbers belong in a table beside it. A zero count (a label missing from a split) is drawn
    at the bottom of a log axis and counted in the key."""
    totals = counts.groupby(x)[values[0]].sum().sort_values(ascending=False, kind="stable")
    rank = pd.Series(np.arange(1, len(totals) + 1), index=totals.index)
    groups = [(None, counts)] if hue is None else [
        (h, counts[counts[hue] == h]) for h in (hue_order or sorted(counts[hue].unique()))
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(values), figsize=(6 * len(values) + 1.5, 4.2), squeeze=False)
    for i, (ax, value) in enumerate(zip(axes[0], values, strict=True)):
        use_log = _log_axis(counts[value], log)
        for name, part in groups:
            per = part.groupby(x)[value].sum().reindex(totals.index, fill_value=0)
            zeros = int((per == 0).sum())
            shown = per.where(per > 0, 0.8) if use_log else per  # zeros at the foot of a log axis
            label = None if name is None else f"{name}" + (f" ({zeros} with none)" if zeros else "")
            ax.plot(rank.to_numpy(), shown.to_numpy(), marker=".", markersize=3, linewidth=1, label=label)
        if use_log:
            ax.set_yscale("log")
        ax.set_ylabel(f"{value}" + (" (log scale)" if use_log else ""))
        ax.set_xlabel(f"{x} ranked by total {values[0]} (1 = largest of {len(totals)})")
        top = counts.groupby(x)[value].max()  # the highest line at a category
        for name, side in ((totals.index[0], "left"), (totals.index[-1], "right")):
            ax.annotate(str(name), (rank[name], max(float(top[name]), 1.0)), fontsize=7, ha=side,
                        xytext=(0, 5), textcoords="offset points")  # fmt: skip
        if i == len(values) - 1 and hue is not None:
            ax.legend(title=hue, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(f"{title} ({len(totals)} {x}s, ranked; numbers per {x} in the table)")
    fig.tight_layout()
    return fig


def image_grid(
    paths: Sequence[Sequence[Path]],
    titles: Sequence[Sequence[str]],
    row_titles: Sequence[str] = (),
    size: float = 1.6,
    suptitle: str = "",
) -> plt.Figure:
    """Thumbnails in rows (e.g. one row per modality), a title under each, a label on the left of each row."""
    nrows, ncols = len(paths), max((len(r) for r in paths), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size + 0.6, nrows * (size + 0.35)), squeeze=False)
    for r, (row_paths, row_titles_) in enumerate(zip(paths, titles, strict=True)):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row_paths):
                ax.imshow(Image.open(row_paths[c]).convert("RGB"))
                ax.set_title(row_titles_[c], fontsize=7)
            else:
                ax.axis("off")
        if r < len(row_titles):
            axes[r, 0].set_ylabel(row_titles[r], fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def class_bars(
    per_class: pd.DataFrame, value: str, label: str = "class", top: int = 10, title: str = ""
) -> plt.Figure:
    """The best and worst classes by `value` (one bar each), as two panels."""
    ranked = per_class.sort_values(value, ascending=False)
    best, worst = ranked.head(top), ranked.tail(top).iloc[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.5, 0.3 * min(top, len(ranked)) + 1)), sharex=True)
    for ax, part, name in zip(axes, (best, worst), ("best", "worst"), strict=True):
        ax.barh(part[label].astype(str), part[value], color=sns.color_palette()[0 if name == "best" else 3])
        ax.invert_yaxis()
        ax.set_title(f"{name} {len(part)} classes")
        ax.set_xlabel(value)
        ax.set_xlim(0, 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def retrieval_gallery(
    query_paths: Sequence[Path],
    query_titles: Sequence[str],
    neighbour_paths: Sequence[Sequence[Path]],
    neighbour_titles: Sequence[Sequence[str]],
    hits: Sequence[Sequence[bool]],
    size: float = 1.5,
) -> plt.Figure:
    """One row per query: the query, then its neighbours framed green (same label) or red (different)."""
    k = max(len(n) for n in neighbour_paths)
    fig, axes = plt.subplots(
        len(query_paths), k + 1, figsize=((k + 1) * size, len(query_paths) * (size + 0.45)), squeeze=False
    )
    for r, qpath in enumerate(query_paths):
        _thumb(axes[r, 0], qpath, query_titles[r], "black", lw=3)
        for c in range(k):
            ax = axes[r, c + 1]
            if c < len(neighbour_paths[r]):
                _thumb(
                    ax,
                    neighbour_paths[r][c],
                    neighbour_titles[r][c],
                    "tab:green" if hits[r][c] else "tab:red",
                )
            else:
                ax.axis("off")
    axes[0, 0].set_title("query\n" + query_titles[0], fontsize=7)
    fig.tight_layout()
    return fig


def _thumb(ax: plt.Axes, path: Path, title: str, colour: str, lw: float = 4) -> None:
    ax.imshow(Image.open(path).convert("RGB"))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(lw)
    ax.set_title(title, fontsize=7)


def scatter_2d(
    coords: np.ndarray, colour_by: dict[str, np.ndarray], title: str = "", max_legend: int = 14
) -> plt.Figure:
    """A 2D embedding (e.g. UMAP) drawn once per labelling, side by side."""
    fig, axes = plt.subplots(1, len(colour_by), figsize=(4.8 * len(colour_by), 4.4), squeeze=False)
    for ax, (name, labels) in zip(axes.flat, colour_by.items(), strict=True):
        classes = sorted(set(labels))
        palette = sns.color_palette("tab10" if len(classes) <= 10 else "tab20", n_colors=max(len(classes), 1))
        for i, cls in enumerate(classes):
            m = labels == cls
            ax.scatter(
                coords[m, 0],
                coords[m, 1],
                s=9,
                color=palette[i % len(palette)],
                label=cls,
                alpha=0.85,
                rasterized=True,  # thousands of points: pixels inside the SVG, axes and text stay vector
            )
        ax.set_title(f"coloured by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(classes) <= max_legend:
            ax.legend(fontsize=LEGEND_SIZE - 1, markerscale=1.8, loc="best", frameon=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _top_classes(values: np.ndarray, top: int) -> tuple[list[str], np.ndarray]:
    """The `top` most frequent classes (ties by name) and the values with every other class renamed "other"."""
    counts = pd.Series(values).value_counts()
    counts = counts.iloc[np.lexsort((counts.index.to_numpy(dtype=str), -counts.to_numpy()))]
    keep = [str(c) for c in counts.index[:top]]
    if len(counts) <= top + 1:  # one leftover class is shown as itself, not as "other"
        keep = [str(c) for c in counts.index]
    shown = np.where(np.isin(values, keep), values, "other")
    return keep, shown


def _class_colours(n: int) -> list:
    """`n` distinct colours for classes, none of them a grey (grey marks "other")."""

    def no_grey(name: str) -> list:
        return [c for c in sns.color_palette(name) if max(c) - min(c) > 0.05]

    for colours in (no_grey("tab10") + [(0.0, 0.0, 0.0)], no_grey("tab20")):  # tab10 with black for its grey
        if n <= len(colours):
            return colours[:n]
    return sns.color_palette("husl", n)


def umap_grid(
    frame: pd.DataFrame,
    levels: Sequence[str] = ("modality", "region", "label"),
    top: int = 10,
    title: str = "",
) -> plt.Figure:
    """Small multiples of 2-D layouts: one row per model, one column per level, a key beside every panel.

    `frame` has columns `model, x, y` and one column per level (e.g. from `analyses.embedding_space.umap_frame`).
    Each level shows its `top` most frequent classes in colour and the rest in light grey as "other: n less frequent
    (of m in the sample)", with the same colours in every row (none of them grey); keys sit outside the axes so they hide no point.
    """
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(
        len(models), len(levels), figsize=(6.6 * len(levels), 3.9 * len(models)), squeeze=False
    )
    for j, level in enumerate(levels):
        values = frame[level].astype(str).to_numpy()
        keep, shown = _top_classes(values, top)
        n_other = len(set(values)) - len(keep)
        palette = dict(zip(keep, _class_colours(len(keep)), strict=True))
        for i, model in enumerate(models):
            ax = axes[i, j]
            m = (frame["model"] == model).to_numpy()
            xy, lab = frame.loc[m, ["x", "y"]].to_numpy(), shown[m]
            if n_other:
                o = lab == "other"
                ax.scatter(
                    xy[o, 0],
                    xy[o, 1],
                    s=5,
                    color="0.75",
                    label=f"other: {n_other} less frequent (of {len(set(values))} in the sample)",
                    alpha=0.6,
                    rasterized=True,
                )
            for cls in keep:
                c = lab == cls
                if c.any():
                    ax.scatter(
                        xy[c, 0], xy[c, 1], s=7, color=palette[cls], label=cls, alpha=0.85, rasterized=True
                    )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{model}: {level}", fontsize=12)
            ax.legend(
                fontsize=LEGEND_SIZE - 1, markerscale=2.2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                frameon=False, handletextpad=0.2, labelspacing=0.3,
            )  # fmt: skip
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def level_scores(
    table: pd.DataFrame,
    y: str,
    lo: str | None = None,
    hi: str | None = None,
    chance: str | None = None,
    title: str = "",
    ylabel: str = "",
    levels: Sequence[str] = ("modality", "region", "label"),
) -> plt.Figure:
    """One marker per model and label level (`table`: model, level, y[, lo, hi, chance]), CI bars, chance dashes.

    The chance value of each marker is a short black line at its x position; the key (models, chance) sits
    to the right of the axes.
    """
    models = list(dict.fromkeys(table["model"]))
    levels = [lv for lv in levels if lv in set(table["level"])]
    width = 0.8 / max(len(models), 1)
    styles = model_styles(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(levels) + 0.3 * len(models)), 3.6))
    for i, model in enumerate(models):
        part = table[table["model"] == model].set_index("level").reindex(levels)
        pos = np.arange(len(levels)) + (i - (len(models) - 1) / 2) * width
        st = styles[model]
        ax.plot(pos, part[y], st["marker"], color=st["color"], label=model, ms=6, ls="none")
        if lo and hi:  # drawn from its bounds: a percentile interval need not contain the estimate
            _interval_bars(ax, pos, *_shown_bounds(part, lo, hi), width, st["color"])
        if chance:
            ax.hlines(part[chance], pos - width * 0.45, pos + width * 0.45, colors="black", lw=1.6,
                      label="chance" if i == 0 else None)  # fmt: skip
    ax.set_xticks(np.arange(len(levels)), levels)
    ax.set_ylabel(ylabel or y)
    if chance is None:
        ax.axhline(0, color="0.5", lw=0.8)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "chance")  # chance after the models
    ax.legend(
        [handles[i] for i in order], [labels[i] for i in order], fontsize=LEGEND_SIZE, loc="center left",
        bbox_to_anchor=(1.0, 0.5), frameon=False,
    )  # fmt: skip
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curves(
    curves: pd.DataFrame, chosen: dict[str, int] | None = None, title: str = ""
) -> plt.Figure:
    """Per model: train and selection loss (left axis, logarithmic: the first epoch's loss can be orders of magnitude
    above the rest), selection accuracy (right axis), chosen epoch dashed.

    `curves`: model, epoch, train_loss, selection_loss, selection_accuracy (the probe outcome's `curve`).
    """
    models = list(dict.fromkeys(curves["model"]))
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 4.3 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        part = curves[curves["model"] == model]
        ax.plot(part["epoch"], part["train_loss"], color="0.2", label="train loss")
        ax.plot(part["epoch"], part["selection_loss"], color="#7b4fa6", ls="--", label="selection loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy (log scale)")
        if (part[["train_loss", "selection_loss"]].to_numpy(dtype=float) > 0).any():
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        acc = ax.twinx()
        acc.plot(
            part["epoch"], part["selection_accuracy"], color="#b08fd0", ls=":", label="selection accuracy"
        )
        acc.set_ylim(0, 1)
        acc.set_ylabel("accuracy")
        acc.grid(False)
        if chosen and model in chosen:
            ax.axvline(chosen[model], color="black", ls="--", lw=1, label=f"chosen epoch {chosen[model]}")
        handles = ax.get_legend_handles_labels()
        extra = acc.get_legend_handles_labels()
        ax.legend(
            handles[0] + extra[0], handles[1] + extra[1], fontsize=LEGEND_SIZE - 1, ncol=2, frameon=False,
            loc="upper center", bbox_to_anchor=(0.5, -0.2), handlelength=1.8, columnspacing=1.0,
        )  # fmt: skip
        ax.set_title(model, fontsize=11)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def similarity_hist(pairs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Densities of the cosine similarity of same-label and different-label pairs."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.histplot(
        data=pairs,
        x="similarity",
        hue="pair",
        stat="density",
        common_norm=False,
        bins=50,
        element="step",
        ax=ax,
    )
    ax.set_xlabel("cosine similarity")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def query_panel(
    query: Image.Image, neighbour_paths: Sequence[Path], titles: Sequence[str], size: float = 1.7
) -> plt.Figure:
    """The query image, then its neighbours in rank order."""
    n = len(neighbour_paths)
    fig, axes = plt.subplots(1, n + 1, figsize=((n + 1) * size, size + 0.6), squeeze=False)
    axes[0, 0].imshow(query.convert("RGB"))
    axes[0, 0].set_title("query", fontsize=8)
    for ax, path, title in zip(axes[0, 1:], neighbour_paths, titles, strict=True):
        ax.imshow(Image.open(path).convert("RGB"))
        ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


# ---- figures of cbmir.analyses (chance references, case-level bands, baselines drawn distinctly) ----------


def compact_count(value: float) -> str:
    """A tick label for a count: '100', '9999', '136 k', '1.36 M' (never '1.35999e+06')."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g} M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g} k"
    return f"{value:g}"


_COUNT_TICKS = matplotlib.ticker.FuncFormatter(lambda v, _: compact_count(v))
CHANCE_STYLE = {"color": "black", "linestyle": ":", "lw": 1.2}
CHANCE_MARK = {"marker": "D", "ms": 4, "mfc": "black", "mec": "white", "mew": 0.5}  # chance on a bar
MAX_BANDS = 6  # more models than this: precision curves without their bands, which would hide each other
CEILING_STYLE = {"color": "firebrick", "linestyle": (0, (8, 3)), "lw": 0.9}  # apart from every model's look


BASELINE_SPECS = ("raw-pixels", "random-vit")  # the floor baselines: greys, each its own dash and marker
LEGEND_SIZE = 10  # key text in every figure
# encoders: tab10 without its grey (index 7), which belongs to the baselines
_ENCODER_COLOURS = [c for i, c in enumerate(sns.color_palette("tab10", 10)) if i != 7]
_BASELINE_LOOKS = (
    {"color": "0.3", "linestyle": "--", "marker": "s", "hatch": "//"},
    {"color": "0.6", "linestyle": "-.", "marker": "^", "hatch": "xx"},
    {"color": "0.45", "linestyle": (0, (1, 1)), "marker": "D", "hatch": ".."},
)
_model_order: list[str] = []


def set_model_order(models: Sequence[str]) -> None:
    """Record a run's model list (the config's `models`; `cbmir.pipeline.Context.open` calls this), so that every
    figure of the run gives each model the same colour, whichever subset of models it draws."""
    _model_order[:] = list(dict.fromkeys(models))


def _plain_log_ticks(ax: plt.Axes) -> None:
    """Tick labels of a log y axis as plain numbers (0.01, 1, 3); the 2, 3 and 5 between powers of ten labelled
    too when the axis spans less than 1.5 decades (so that it shows more than one label)."""
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    low, high = ax.get_ylim()
    narrow = low > 0 and np.log10(high / low) < 1.5

    def minor(v: float, _pos: int) -> str:
        lead = round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if narrow and lead in (2, 3, 5) else ""

    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor))


def is_baseline(spec: str, baselines: Sequence[str] = ()) -> bool:
    """A floor baseline: a preset of `BASELINE_SPECS` (any argument, e.g. `raw-pixels:16`) or one of `baselines`."""
    return spec in baselines or str(spec).split(":", 1)[0] in BASELINE_SPECS


def model_styles(
    models: Sequence[str], order: Sequence[str] | None = None, baselines: Sequence[str] = ()
) -> dict[str, dict]:
    """{model spec: {color, linestyle, marker, hatch}}, one look per model, stable given `order`.

    `order` is the run's model list (default: the one recorded by `set_model_order`); models not in it follow it
    in the order given. Encoders take the tab10 colours (grey excluded) by their position among the encoders of
    that list, solid lines and round markers; baselines (`is_baseline`) take greys, each with its own dash,
    marker and bar hatch, so two baselines never look alike.
    """
    full = list(dict.fromkeys([*(_model_order if order is None else order), *models]))
    encoders = [m for m in full if not is_baseline(m, baselines)]
    bases = [m for m in full if is_baseline(m, baselines)]
    styles = {}
    for m in models:
        if m in bases:
            styles[m] = dict(_BASELINE_LOOKS[bases.index(m) % len(_BASELINE_LOOKS)])
        else:
            colour = _ENCODER_COLOURS[encoders.index(m) % len(_ENCODER_COLOURS)]
            styles[m] = {"color": colour, "linestyle": "-", "marker": "o", "hatch": ""}
    return styles


def _model_styles(models: Sequence[str], baselines: Sequence[str]) -> dict[str, dict]:
    """`model_styles` for lines: colour, line style and marker."""
    return {
        m: {k: v for k, v in st.items() if k != "hatch"}
        for m, st in model_styles(models, baselines=baselines).items()
    }


def _legend_outside(fig: plt.Figure, ax: plt.Axes) -> None:
    """The axes' key outside it, on the right; reference lines (chance, ceiling) after the models."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith(("chance", "ceiling")))  # stable
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if handles:
        fig.legend(
            handles, labels, fontsize=LEGEND_SIZE, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
        )


def curves_with_chance(
    curves: pd.DataFrame,
    baselines: Sequence[str] = (),
    title: str = "",
    max_n: int | None = None,
    ylabel: str = "modified precision@N",
    max_bands: int = MAX_BANDS,
) -> plt.Figure:
    """Micro and macro P@N against N: a line and a case-level band per model, the chance line of each panel.

    `curves`: `analyses.retrieval.precision_curves` rows with a `model` column (chance_micro/chance_macro are
    drawn once per model whose chance differs; with one shared index they coincide). Legend outside the axes.
    With more than `max_bands` models the bands (which would hide each other) are left out; the title says which.
    """
    if max_n is not None:
        curves = curves[curves["N"] <= max_n]
    models = list(dict.fromkeys(curves["model"]))
    styles = _model_styles(models, baselines)
    banded = len(models) <= max_bands
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind in zip(axes, ("micro", "macro"), strict=True):
        drawn: list[np.ndarray] = []
        for model in models:
            g = curves[curves["model"] == model]
            st = styles[model]
            ax.plot(g["N"], g[kind], label=model, lw=1.6, ms=4, markevery=0.12, **st)
            if banded:
                ax.fill_between(
                    g["N"], *_shown_bounds(g, f"{kind}_lo", f"{kind}_hi"), color=st["color"], alpha=0.15, lw=0
                )
            ch = g[f"chance_{kind}"].to_numpy()
            if not any(len(d) == len(ch) and np.allclose(d, ch) for d in drawn):
                ax.plot(g["N"], ch, label="chance" if not drawn else f"chance ({model})", **CHANCE_STYLE)
                if not drawn:  # its value, readable even where the line sits on the axis
                    ax.annotate(f"chance {ch[-1]:.3f}", (g["N"].iloc[-1], ch[-1]), xytext=(-2, 3),
                                textcoords="offset points", ha="right", va="bottom", fontsize=8)  # fmt: skip
                drawn.append(ch)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_COUNT_TICKS)
        ax.set_xlabel("N (neighbours considered)")
        ax.set_title(f"{kind} average")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel(ylabel)
    _legend_outside(fig, axes[1])
    bands = (
        "bands: 95 % CI over cases"
        if banded
        else f"no bands for {len(models)} models, more than {max_bands}; intervals in the tables"
    )
    fig.suptitle(f"{title} ({bands})" if title else bands.capitalize())
    fig.tight_layout()
    return fig


# colours of a non-model hue (classifier heads, loss curves): purples, kept apart from the models' colours
HUE_COLOURS = ["#5b3a8c", "#b99ad6", "#2d1b4e", "#e2d4f0"]


MAX_BARS_PER_ROW = 48  # more bars than this wrap onto further rows of panels (e.g. 16 regions x 9 models)


def bars_with_chance(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    low: str | None = None,
    high: str | None = None,
    chance: str | None = "chance",
    baselines: Sequence[str] = (),
    title: str = "",
    ylabel: str = "",
) -> plt.Figure:
    """Bars of `y` per `x` (grouped by `hue`), CI error bars, and a black tick at each bar's chance value.

    When `hue` (or, without a hue, `x`) is "model", bars take the model's colour of `model_styles`; otherwise the
    hue's. Bars of a baseline (`is_baseline`, or listed in `baselines`) carry that baseline's hatch. Legend
    outside the axes. More than `MAX_BARS_PER_ROW` bars wrap onto further rows of panels (same y axis).
    """
    xs = list(dict.fromkeys(df[x]))
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    width = 0.8 / len(hues)
    # a hue that is not the model (e.g. the classifier head) gets purples, apart from every model's colour
    palette = (
        HUE_COLOURS[: max(1, len(hues))]
        if len(hues) <= len(HUE_COLOURS)
        else sns.color_palette("Purples_d", len(hues))
    )
    by_model = hue == "model" or (hue is None and x == "model")
    looks = (
        model_styles(hues if hue == "model" else xs, baselines=baselines) if by_model or x == "model" else {}
    )
    per_row = max(1, MAX_BARS_PER_ROW // len(hues))
    groups = [xs[i : i + per_row] for i in range(0, len(xs), per_row)]
    row_width = max(5.5, 0.9 * len(groups[0]) * max(1, len(hues) / 2) + 2)
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(row_width, 3.8 * len(groups)), sharey=True, squeeze=False
    )
    chance_labelled = False
    for ax, group in zip(axes.flat, groups, strict=True):
        for i, h in enumerate(hues):
            part = (df if h is None else df[df[hue] == h]).set_index(x).reindex(group)
            pos = np.arange(len(group)) + (i - (len(hues) - 1) / 2) * width
            model_of = [h if hue == "model" else v for v in group]  # the model each bar shows, if any
            if by_model:
                colours = [looks[m]["color"] for m in model_of]
            else:  # colour by hue; a baseline's bars keep it and carry their hatch
                colours = [palette[i % len(palette)]] * len(group)
            hatches = [looks[m]["hatch"] if m in looks else "" for m in model_of]
            keyed = h is not None and by_model and ax is axes.flat[0]  # a model's key: its bars' look
            bars = ax.bar(
                pos,
                part[y],
                width=width,
                color=colours,
                edgecolor="0.15",
                linewidth=0.4,
                label=str(h) if keyed else None,
            )
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
            if h is not None and not by_model and ax is axes.flat[0]:  # another hue's key: its colour alone
                ax.bar([np.nan], [np.nan], color=colours[0], edgecolor="0.15", linewidth=0.4, label=str(h))
            if low and high:  # drawn from its bounds: a percentile interval need not contain the estimate
                _interval_bars(ax, pos, *_shown_bounds(part, low, high), width)
            if chance and chance in part:  # a tick across the bar and a diamond, seen even on the axis
                ax.hlines(part[chance], pos - width / 2, pos + width / 2, colors="black", lw=2)
                ax.plot(pos, part[chance], ls="none", **CHANCE_MARK, clip_on=False, zorder=5)
                if not chance_labelled:
                    ax.plot([], [], color="black", lw=2, **CHANCE_MARK, label="chance")
                chance_labelled = True
        ax.set_xticks(np.arange(len(group)), [str(v) for v in group], rotation=20, ha="right")
        ax.set_xlim(-0.6, per_row - 0.4 if len(groups) > 1 else len(group) - 0.4)
        ax.set_ylabel(ylabel or y)
        ax.set_ylim(0, 1.02)
    first = axes.flat[0]
    for m in xs if not by_model else ():  # one key entry per hatched baseline, with its own hatch
        if looks.get(m, {}).get("hatch"):
            first.bar(
                [np.nan],
                [np.nan],
                color="white",
                edgecolor="0.15",
                linewidth=0.4,
                hatch=looks[m]["hatch"],
                label=m,
            )
    if title:
        first.set_title(title)
    _legend_outside(fig, first)
    fig.tight_layout()
    return fig


def _shown_bounds(part: pd.DataFrame, low: str, high: str) -> tuple[np.ndarray, np.ndarray]:
    """The `low` and `high` columns of `part`, NaN in rows with fewer than `MIN_CASES` cases (`tables.few_cases`):
    the figures, like the tables and sentences, draw no interval that too few cases cannot carry."""
    few = few_cases(part)
    lo, hi = part[low].to_numpy(dtype=float).copy(), part[high].to_numpy(dtype=float).copy()
    lo[few], hi[few] = np.nan, np.nan
    return lo, hi


def _interval_bars(
    ax,
    pos: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    width: float,
    colour: str = "0.15",
    horizontal: bool = False,
) -> None:
    """Interval lines with caps from `low` to `high` at each `pos` (vertical; `horizontal` for horizontal bars),
    drawn from the bounds themselves, so an interval that does not contain its estimate is drawn as it is (NaN
    bounds: nothing drawn)."""
    low, high, pos = (np.asarray(a, dtype=np.float64) for a in (low, high, pos))
    ok = np.isfinite(low) & np.isfinite(high)
    span, cap = (ax.hlines, ax.vlines) if horizontal else (ax.vlines, ax.hlines)
    span(pos[ok], low[ok], high[ok], colors=colour, lw=1)
    for bound in (low, high):
        cap(bound[ok], pos[ok] - width / 8, pos[ok] + width / 8, colors=colour, lw=1)


def index_size_curves(
    table: pd.DataFrame,
    metric: str = "plain P@N",
    average: str = "micro",
    baselines: Sequence[str] = (),
    title: str = "",
    x: str = "index_cases",
    share: bool = False,
) -> plt.Figure:
    """`analyses.index_size.index_size_study` rows (with a `model` column): one panel per N, the estimate against
    the index size `x` (cases, the unit subsampled; or `index_images`), log axis, with its pooled band per model,
    the chance curve and (where the table has it) the ceiling, the highest value the queries can reach at that
    size: both change with the index. With `share`, the share of the room between them instead,
    (P - chance) / (ceiling - chance) (columns share, share_low, share_high): chance at 0, the ceiling at 1."""
    part = table[(table["metric"] == metric) & (table["average"] == average)]
    if share:
        part = part.drop(columns=["estimate", "low", "high", "chance", "ceiling"], errors="ignore").rename(
            columns={"share": "estimate", "share_low": "low", "share_high": "high"}
        )
        part = part.assign(chance=0.0, ceiling=1.0)
    ns = sorted(set(part["N"]))
    models = list(dict.fromkeys(part["model"]))
    styles = _model_styles(models, baselines)
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns) + 1.5, 3.6), sharey=True, squeeze=False)
    for ax, n in zip(axes.flat, ns, strict=True):
        drawn: dict[str, list[np.ndarray]] = {"chance": [], "ceiling": []}
        for model in models:
            g = part[(part["model"] == model) & (part["N"] == n)].sort_values(x)
            st = styles[model]
            ax.plot(g[x], g["estimate"], ms=4, lw=1.5, label=model, **st)
            ax.fill_between(g[x], *_shown_bounds(g, "low", "high"), color=st["color"], alpha=0.15, lw=0)
            for ref, style in (("chance", CHANCE_STYLE), ("ceiling", CEILING_STYLE)):
                if ref not in g:
                    continue
                v = g[ref].to_numpy()
                if not any(len(d) == len(v) and np.allclose(d, v) for d in drawn[ref]):
                    name = "ceiling (highest reachable)" if ref == "ceiling" else ref
                    ax.plot(g[x], v, label=name if not drawn[ref] else f"{name} ({model})", **style)
                    drawn[ref].append(v)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_COUNT_TICKS)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sorted(set(part[x])))
        ax.set_title(f"N = {n}")
        ax.set_xlabel(f"{x.replace('_', ' ')} (log scale)")
        if share:  # below chance is possible
            ax.set_ylim(
                min(-0.05, float(np.nanmin(part["low"])) - 0.05),
                max(1.05, float(np.nanmax(part["high"])) + 0.05),
            )
        else:
            ax.set_ylim(0, 1.05)  # the ceiling, often 1, stays off the frame
    axes.flat[0].set_ylabel(f"{average} {metric}" + (": share of the room" if share else ""))
    _legend_outside(fig, axes.flat[-1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def best_worst_bars(
    best: pd.DataFrame, worst: pd.DataFrame, value: str, label: str = "class", title: str = ""
) -> plt.Figure:
    """`analyses.retrieval.best_worst` panels: bars with CI (`<value>_lo/_hi` if present), chance ticks
    (`chance`), and each class's value and numbers of queries and cases written beside its bar (a bar at 0 has
    no length)."""
    rows = max(len(best), len(worst), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, max(2.5, 0.32 * rows + 1.2)), sharex=True)
    for ax, part, name, colour in zip(
        axes,
        (best, worst),
        ("highest", "lowest"),
        (sns.color_palette()[0], sns.color_palette()[3]),
        strict=True,
    ):
        ax.set_title(f"{name} {value}: {len(part)} class{'' if len(part) == 1 else 'es'}")
        ax.set_xlabel(value)
        ax.set_xlim(0, 1.4)
        if part.empty:
            continue
        pos = np.arange(len(part))
        ax.barh(pos, part[value], color=colour)
        if f"{value}_lo" in part:
            _interval_bars(ax, pos, *_shown_bounds(part, f"{value}_lo", f"{value}_hi"), 0.8, horizontal=True)
        if "chance" in part:
            ax.vlines(part["chance"], pos - 0.4, pos + 0.4, colors="black", lw=2, label="chance")
        ax.set_yticks(pos, part[label].astype(str), fontsize=8)
        for p, (_, r) in zip(pos, part.iterrows(), strict=True):
            if "n_queries" in r and "n_cases" in r:
                n_q, n_c = int(r["n_queries"]), int(r["n_cases"])
                text = f"{r[value]:.3f}; {n_q:,} quer{'y' if n_q == 1 else 'ies'}, {n_c:,} case{'' if n_c == 1 else 's'}"
                ax.text(1.05, p, text, va="center", fontsize=7)
        ax.invert_yaxis()
    if "chance" in best or "chance" in worst:
        _legend_outside(fig, axes[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
