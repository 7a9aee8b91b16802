"""The report as a static website: `reports/<config>/site/`, one page per executed notebook and a landing page.

The report runner builds it at the end of every run (it replaces the per-notebook HTML copies); `site_command`
rebuilds it from the files a run left behind (`cbmir site --config C`). Each analysis page is the executed
notebook rendered with nbconvert (code folded into a closed `<details>`), with links to the executed notebook,
its source notebook and its CSV tables. The landing page reads like an abstract: the models of the config, the
data (with its data card), the headline figure, the generated findings (`reports/<config>/findings.md`) and the
contents in the config's notebook order, per-model notebooks grouped under their analysis.

Why nbconvert (and not Quarto or Jupyter Book): it is the Jupyter project's own converter, already pinned for
the runner, pure Python and offline; the site needs no other toolchain (Quarto ships a 100+ MB binary, Jupyter
Book 2 needs Node.js), builds in seconds, and lets figures be referenced from `figures/<config>/` instead of being
copied, so the committed outputs do not grow. Navigation, landing page and styles are the templates in
`cbmir/site_templates/`.

Figures: an image output whose bytes equal a PNG in `figures/<config>/` is replaced by a link to that file (and
its SVG); other images stay inline. The site has no external resources (no CDN, no web fonts): it works offline
and can be published as it is (README: "The report as a website").
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cbmir.errors import CbmirError

SITE_DIR = "site"
TEMPLATES = Path(__file__).with_name("site_templates")
HEADLINE_FIGURE = "08_summary-curves"
FINDINGS = "findings.md"
SCREENSHOT = "screenshot.png"
RESERVED_PAGES = ("index.html", "data.html")
PARAMETER_TAGS = ("parameters", "injected-parameters")
# pandas' own truncation marks in a rendered DataFrame: the "…" row/column and the "N rows × M columns" footer
_PANDAS_TRUNCATED = re.compile(r"<p>\d+ rows × \d+ columns</p>|<t[dh][^>]*>[^<]*\.\.\.</t[dh]>")


class SiteError(CbmirError):
    """The site cannot be built from what is on disk (e.g. no executed notebook for the config)."""


@dataclass
class Page:
    """One analysis page: one executed notebook (one job of the runner)."""

    output_name: str
    entry: str
    model: str | None
    notebook: Path
    source: Path
    status: str = "not recorded"
    seconds: float | None = None
    error: str | None = None
    title: str = ""
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"{self.output_name}.html"

    @property
    def rendered(self) -> bool:
        return self.notebook.exists()


@dataclass
class Section:
    """One notebook of the config, with its page (or one page per model)."""

    name: str
    title: str
    question: str
    per_model: bool
    pages: list[Page]


@dataclass
class SiteBuild:
    """What `build_site` wrote and what it noticed."""

    site_dir: Path
    files: list[Path]
    sections: list[Section]
    warnings: list[str]
    inline_images: int = 0

    @property
    def index(self) -> Path:
        return self.site_dir / "index.html"


def build_site(config: Any, out_root: str | Path | None = None, quick: bool = False) -> SiteBuild:
    """Build `reports/<config>/site/` from the executed notebooks, tables and figures of a config's last run.

    `config` is a config path or a loaded `ReportConfig`. Per-notebook HTML copies left beside the notebooks by
    earlier versions of the runner are removed (the site replaces them).
    """
    cfg = _config(config, out_root=out_root, quick=quick)
    sections = plan_sections(cfg)
    clash = [p.output_name for s in sections for p in s.pages if p.filename in RESERVED_PAGES]
    if clash:
        raise SiteError(
            f"{cfg.path}: notebook(s) {clash} would overwrite the site's own pages {RESERVED_PAGES}"
        )
    if not any(p.rendered for s in sections for p in s.pages):
        raise SiteError(f"{cfg.path}: no executed notebook under {cfg.reports_dir}; run `cbmir report` first")
    site_dir = cfg.reports_dir / SITE_DIR
    site_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*site_dir.glob("*.html"), site_dir / "style.css"]:
        stale.unlink(missing_ok=True)
    builder = _Builder(cfg, site_dir, sections)
    files = builder.write_all()
    for page in (p for s in sections for p in s.pages):
        (cfg.reports_dir / f"{page.output_name}.html").unlink(missing_ok=True)  # the old loose copies
    return SiteBuild(site_dir, files, sections, builder.warnings, builder.inline_images)


def build_after_run(cfg: Any, check: bool = True) -> int:
    """The runner's last step: build the site, check it in Chromium where present; 0 if the site was built.

    Problems the browser finds are printed, not fatal (the test suite holds the site to them).
    """
    try:
        build = build_site(cfg)
    except Exception as err:  # the notebooks' outputs stand without the site; say why it is missing
        print(f"  site: not built: {err}")
        return 1
    _print_build(build, cfg.root)
    if check:
        try:
            _check_and_print(build, cfg.root)
        except Exception as err:  # a browser that misbehaves must not hide the finished run's outputs
            print(f"  site: browser check failed to run: {type(err).__name__}: {err}")
    return 0


def site_command(
    config: str | Path, quick: bool = False, out_root: str | Path | None = None, check: bool = True
) -> int:
    """`cbmir site --config C`: rebuild the site from the last run's files; check it; 0 when the site is sound.

    Returns 1 when the browser check finds a problem, 0 when it passes or Chromium is absent (it says so).
    """
    cfg = _config(config, out_root=out_root, quick=quick)
    build = build_site(cfg)
    _print_build(build, cfg.root)
    if not check:
        return 0
    result = _check_and_print(build, cfg.root)
    return 1 if result is not None and result.problems else 0


def plan_sections(cfg: Any) -> list[Section]:
    """The config's notebooks in order, each with its page(s), run status and tables."""
    from cbmir.report import plan_jobs

    log = _read_run_log(cfg.reports_dir / "run.json")
    tables = sorted((cfg.reports_dir / "tables").glob("*.csv"))
    sections: dict[str, Section] = {}
    for job in plan_jobs(cfg):
        entry = job.notebook.stem
        record = log.get(job.output_name, {})
        rendered = (cfg.reports_dir / f"{job.output_name}.ipynb").exists()
        page = Page(
            output_name=job.output_name,
            entry=entry,
            model=job.parameters.get("model"),
            notebook=cfg.reports_dir / f"{job.output_name}.ipynb",
            source=job.notebook,
            status=str(record.get("status", "ok")) if record else ("not recorded" if rendered else "not run"),
            seconds=record.get("seconds"),
            error=_last_line(record.get("error")),
        )
        if job.skip:  # the runner does not run it: say why rather than showing an old or absent page
            page.status, page.error = "skipped", job.skip
        section = sections.get(entry)
        if section is None:
            per_model = "model" in job.parameters and job.output_name != entry
            title, question = _title_and_question(page.notebook if page.rendered else job.notebook, entry)
            section = sections[entry] = Section(entry, title, question, per_model, [])
        page.title = section.title + (f" — {page.model}" if section.per_model else "")
        section.pages.append(page)
    pages = [p for s in sections.values() for p in s.pages]
    for table in tables:
        owner = max(
            (p for p in pages if table.stem == p.output_name or table.stem.startswith(p.output_name + "-")),
            key=lambda p: len(p.output_name),
            default=None,
        )
        if owner is not None:
            owner.tables.append(table)
    return list(sections.values())


def orphan_tables(cfg: Any, sections: list[Section]) -> list[Path]:
    """CSV tables of the run that no analysis page claims (they are listed on the landing page)."""
    claimed = {t for s in sections for p in s.pages for t in p.tables}
    return [t for t in sorted((cfg.reports_dir / "tables").glob("*.csv")) if t not in claimed]


class _Builder:
    def __init__(self, cfg: Any, site_dir: Path, sections: list[Section]) -> None:
        import jinja2

        self.cfg, self.site_dir, self.sections = cfg, site_dir, sections
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            trim_blocks=False,
            undefined=jinja2.StrictUndefined,
        )
        self.warnings: list[str] = []
        self.inline_images = 0
        self.figures = _figure_index(cfg.figures_dir)
        self.figure_pages: dict[Path, Page] = {}
        self._exporter = None

    # -- paths ---------------------------------------------------------------------------------------------
    def href(self, target: Path) -> str:
        return quote(Path(os.path.relpath(target, self.site_dir)).as_posix())

    def label(self, target: Path) -> str:
        return _portable(target, self.cfg.root)

    # -- pages ---------------------------------------------------------------------------------------------
    def write_all(self) -> list[Path]:
        pages = [p for s in self.sections for p in s.pages if p.rendered]
        bodies = {p.output_name: self.render_notebook(p) for p in pages}  # first: fills figure_pages
        order = (
            [("index.html", "Overview")]
            + [(p.filename, p.title) for p in pages]
            + [("data.html", "Data card")]
        )
        files = []
        for i, (filename, _) in enumerate(order):
            prev = order[i - 1] if i > 0 else None
            nxt = order[i + 1] if i + 1 < len(order) else None
            context = self.common(filename, prev, nxt)
            if filename == "index.html":
                text = self.env.get_template("landing.html.j2").render(**context, **self.landing())
            elif filename == "data.html":
                text = self.env.get_template("document.html.j2").render(**context, **self.data_card())
            else:
                page = next(p for p in pages if p.filename == filename)
                context["has_code"] = True
                text = self.env.get_template("analysis.html.j2").render(
                    **context, page=self.page_view(page), body=_markup(bodies[page.output_name])
                )
            path = self.site_dir / filename
            path.write_text(text, encoding="utf-8")
            files.append(path)
        css = (
            (TEMPLATES / "style.css").read_text() + "\n/* code highlighting (Pygments) */\n" + _pygments_css()
        )
        (self.site_dir / "style.css").write_text(css, encoding="utf-8")
        files.append(self.site_dir / "style.css")
        return files

    def common(
        self, current: str, prev: tuple[str, str] | None, nxt: tuple[str, str] | None
    ) -> dict[str, Any]:
        return {
            "site_title": f"cbmir report · {self.cfg.name}",
            "title": {"index.html": "Overview", "data.html": "Data card"}.get(current)
            or next(p.title for s in self.sections for p in s.pages if p.filename == current),
            "current": current,
            "sections": [self.section_view(s) for s in self.sections],
            "prev": {"href": prev[0], "label": prev[1]} if prev else None,
            "next": {"href": nxt[0], "label": nxt[1]} if nxt else None,
            "has_code": False,
            "reports_label": self.label(self.cfg.reports_dir) + "/",
        }

    def section_view(self, section: Section) -> dict[str, Any]:
        return {
            "title": section.title,
            "question": _markup(_inline_markdown(section.question)) if section.question else "",
            "per_model": section.per_model,
            "pages": [
                {
                    "href": p.filename if p.rendered else "",
                    "label": p.model or section.title,
                    "status": p.status if p.status in ("failed", "not run", "skipped") else "",
                }
                for p in section.pages
            ],
        }

    def page_view(self, page: Page) -> dict[str, Any]:
        return {
            "model": page.model,
            "notebook_href": self.href(page.notebook),
            "notebook_label": self.label(page.notebook),
            "source_href": self.href(page.source) if page.source.exists() else "",
            "source_label": self.label(page.source),
            "seconds": page.seconds,
            "tables": [{"href": self.href(t), "label": t.name} for t in page.tables],
            "status": page.status,
            "error": page.error,
        }

    def render_notebook(self, page: Page) -> str:
        import nbformat

        nb = nbformat.read(page.notebook, as_version=4)
        nb = self.reference_figures(nb, page)
        cut = 0
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                text = out.get("data", {}).get("text/html", "")
                cut += bool(_PANDAS_TRUNCATED.search("".join(text) if isinstance(text, list) else text))
        if cut:
            self.warnings.append(
                f"{page.notebook.name}: {cut} table(s) cut by pandas' display limits "
                "(display them with cbmir.tables.show)"
            )
        body, _ = self.exporter.from_notebook_node(nb)
        return body

    @property
    def exporter(self):
        if self._exporter is None:
            from nbconvert import HTMLExporter

            self._exporter = HTMLExporter(
                template_name="cbmir-site",
                extra_template_basedirs=[str(TEMPLATES)],
                exclude_input_prompt=True,
                exclude_output_prompt=True,
            )
        return self._exporter

    def reference_figures(self, nb: Any, page: Page) -> Any:
        """Replace each image output that is a saved figure by an <img> of `figures/<config>/<name>.png`."""
        nb = copy.deepcopy(nb)
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "image/png" not in data:
                    continue
                raw = data["image/png"]
                digest = hashlib.sha256(
                    base64.b64decode("".join(raw) if isinstance(raw, list) else raw)
                ).hexdigest()
                png = self.figures.get(digest)
                if png is None:
                    self.inline_images += 1
                    continue
                page.figures.append(png)
                self.figure_pages.setdefault(png, page)
                data.pop("image/png")
                data.pop("text/plain", None)
                data["text/html"] = self.figure_html(png)
        return nb

    def figure_html(self, png: Path) -> str:
        svg = png.with_suffix(".svg")
        alt = html.escape(png.stem.replace("--", " ").replace("-", " ").replace("_", " "))
        links = f'<a href="{self.href(png)}">PNG</a>'
        if svg.exists():
            links += f' · <a href="{self.href(svg)}">SVG</a>'
        return (
            f'<figure class="cbmir-figure"><img src="{self.href(png)}" alt="{alt}">'
            f"<figcaption><code>{html.escape(png.name)}</code> · {links}</figcaption></figure>"
        )

    # -- landing page and data card ------------------------------------------------------------------------
    def landing(self) -> dict[str, Any]:
        cfg = self.cfg
        findings_path = cfg.reports_dir / FINDINGS
        findings = ""
        if findings_path.exists():
            text = _rebase_links(
                _markdown(findings_path.read_text(encoding="utf-8")), findings_path.parent, self.site_dir
            )
            findings = _markup(_demote_headings(text))
        pages = [p for s in self.sections for p in s.pages]
        ok = sum(p.status == "ok" for p in pages)
        seconds = sum(p.seconds or 0 for p in pages)
        failed = [p.output_name for p in pages if p.status == "failed"]
        not_run = [p.output_name for p in pages if p.status == "not run"]
        skipped = [f"{p.output_name} ({p.error})" for p in pages if p.status == "skipped"]
        ran = len(pages) - sum(p.status == "skipped" for p in pages)
        n_skipped = len(pages) - ran
        run_text = (
            f"{ok} of {len(pages)} notebooks ran without error in the last run ({seconds:.0f} s in all)"
            + (f"; {n_skipped} skipped." if n_skipped else ".")
        )
        if failed:
            run_text += f" Failed: {', '.join(failed)}."
        if not_run:
            run_text += f" Not run: {', '.join(not_run)}."
        if skipped:
            run_text += f" Skipped: {'; '.join(skipped)}."
        return {
            "heading": f"Content-based image retrieval in radiology: the {cfg.name} report",
            "description": (getattr(cfg, "description", "") or "").strip(),
            "compared": _markup(self.compared_text()),
            "data_text": _markup(self.data_text()),
            "headline": self.headline(),
            "headline_missing": self.label(cfg.figures_dir / f"{HEADLINE_FIGURE}.png"),
            "findings": findings,
            "findings_href": self.href(findings_path),
            "findings_label": self.label(findings_path),
            "findings_command": f"cbmir report --config {self.label(cfg.path)} --only 08_summary",
            "other_tables": [
                {"href": self.href(t), "label": t.name} for t in orphan_tables(cfg, self.sections)
            ],
            "run_text": run_text,
            "run_log_href": self.href(cfg.reports_dir / "run.json"),
            "figures_label": self.label(cfg.figures_dir) + "/",
        }

    def compared_text(self) -> str:
        models = list(self.cfg.models)
        names = ", ".join(f"<code>{html.escape(m)}</code>" for m in models)
        return (
            f"{len(models)} image encoder{'s' if len(models) != 1 else ''} ({names}), each used frozen as a feature "
            "extractor: every test image queries the index (training) images by the cosine similarity of its "
            "L2-normalised embedding, and a neighbour counts as a hit when it has the query's label (modified "
            "precision@N, as in Denner et al., arXiv 2403.06567). The contents below list every analysis of them."
        )

    def data_text(self) -> str:
        cfg = self.cfg
        manifest = Path(cfg.manifest)
        card = data_card_path(manifest)
        card_link = ' (<a href="data.html">data card</a>)' if card is not None else " (no data card found)"
        stats = manifest_summary(manifest, cfg.max_per_class, cfg.seed)
        return f"<code>{html.escape(self.label(manifest))}</code>{card_link}: {html.escape(stats)}"

    def headline(self) -> dict[str, str] | None:
        png = self.cfg.figures_dir / f"{HEADLINE_FIGURE}.png"
        if not png.exists():
            return None
        svg = png.with_suffix(".svg")
        source = self.figure_pages.get(png)
        caption = "Precision@N of every model, with bootstrap 95 % bands"
        caption_html = html.escape(caption)
        if source is not None:
            caption_html += f' (from <a href="{source.filename}">{html.escape(source.title)}</a>)'
        return {
            "png_href": self.href(png),
            "svg_href": self.href(svg) if svg.exists() else "",
            "alt": caption,
            "caption": _markup(caption_html + "."),
        }

    def data_card(self) -> dict[str, Any]:
        card = data_card_path(Path(self.cfg.manifest))
        if card is None:
            body = (
                f'<h1>Data card</h1><p class="missing">No data card beside the manifest '
                f"<code>{html.escape(self.label(Path(self.cfg.manifest)))}</code> (looked for "
                "<code>&lt;manifest&gt;.md</code> and <code>README.md</code> in its folder).</p>"
            )
            return {
                "body": _markup(body),
                "source_href": self.href(Path(self.cfg.manifest)),
                "source_label": self.label(Path(self.cfg.manifest)),
            }
        text = _rebase_links(_markdown(card.read_text(encoding="utf-8")), card.parent, self.site_dir)
        return {"body": _markup(text), "source_href": self.href(card), "source_label": self.label(card)}


def data_card_path(manifest: Path) -> Path | None:
    """The data card of a manifest: `<manifest stem>.md` beside it, else the folder's `README.md`."""
    for candidate in (manifest.with_suffix(".md"), manifest.parent / "README.md"):
        if candidate.exists():
            return candidate
    return None


def manifest_summary(manifest: Path, max_per_class: int | None = None, seed: int = 0) -> str:
    """'253 images analysed (train 123, ...), 48 test cases; of a manifest of 3,451 images ...'.

    With a per-class cap (`max_per_class` in the config) the numbers of the analysed subset come first: they are
    what every analysis ran on.
    """
    import pandas as pd

    if not manifest.exists():
        return "the manifest is not on this machine."
    try:
        df = pd.read_csv(manifest, low_memory=False)
    except (OSError, ValueError) as err:
        return f"the manifest could not be read ({err})."
    if not max_per_class:
        return _counts(df) + ". The training split is the search index, the test split the queries."
    from cbmir.pipeline import subsample_per_class

    try:
        used = subsample_per_class(df, max_per_class, seed=seed)
    except (KeyError, ValueError) as err:
        return f"{_counts(df)}; the analysed subset could not be derived ({err})."
    return (
        f"every analysis ran on a seeded, case-aware subset of at most {max_per_class} images per split and class "
        f"(the same images for every model): {_counts(used)}. The full manifest holds {_counts(df)}. "
        "The training split is the search index, the test split the queries."
    )


def _counts(df) -> str:
    """'3,451 images (train 2,057, val 299, test 1,095), 24 labels, 7 modalities, 967 cases (320 in test)'."""
    parts = [f"{len(df):,} images"]
    if "split" in df:
        counts = df["split"].value_counts()
        order = [s for s in ("train", "val", "test") if s in counts] + sorted(
            set(counts.index) - {"train", "val", "test"}
        )
        parts[0] += " (" + ", ".join(f"{s} {counts[s]:,}" for s in order) + ")"
    labels = [c for c in df.columns if "/" in str(c)]
    if labels:
        parts.append(f"{len(labels)} labels")
    for column, one, many in (("modality", "modality", "modalities"), ("dataset", "dataset", "datasets")):
        if column in df:
            n = df[column].nunique()
            parts.append(f"{n} {one if n == 1 else many}")
    if "patient_id" in df:
        test = df.loc[df["split"] == "test", "patient_id"].nunique() if "split" in df else 0
        parts.append(
            f"{df['patient_id'].nunique():,} cases (patients, volumes or near-duplicate groups; {test:,} in test)"
        )
    return ", ".join(parts)


# -- the browser check ---------------------------------------------------------------------------------------
def _check_and_print(build: SiteBuild, root: Path):
    from cbmir import site_check

    chromium = site_check.find_chromium()
    if chromium is None:
        print(f"  site: not checked in a browser: {site_check.NO_CHROMIUM}")
        return None
    try:
        result = site_check.check_site(
            build.site_dir, screenshot=build.site_dir / SCREENSHOT, chromium=chromium
        )
    except site_check.BrowserError as err:
        print(f"  site: browser check could not run: {err}")
        return None
    where = _portable(build.site_dir / SCREENSHOT, root)
    if result.problems:
        print(
            f"  site: {len(result.problems)} problem(s) in Chromium ({len(result.pages)} pages); screenshot {where}"
        )
        for problem in result.problems[:20]:
            print(f"    {problem}")
    else:
        print(f"  site: {len(result.pages)} pages checked in Chromium, no problem; screenshot {where}")
    return result


def _print_build(build: SiteBuild, root: Path) -> None:
    print(f"  site: {_portable(build.index, root)} ({len(build.files)} files)")
    for warning in build.warnings:
        print(f"    warning: {warning}")


# -- helpers -------------------------------------------------------------------------------------------------
def _config(config: Any, out_root: str | Path | None = None, quick: bool = False) -> Any:
    if isinstance(config, (str, Path)):
        from cbmir.config import load_config

        return load_config(config, quick=quick, out_root=out_root)
    return config


def _read_run_log(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        log = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SiteError(f"{path}: not valid JSON ({err})") from err
    jobs = log.get("jobs", log) if isinstance(log, dict) else {}
    return {k: v for k, v in jobs.items() if isinstance(v, dict)}


def _title_and_question(notebook: Path, fallback: str) -> tuple[str, str]:
    """The notebook's first '# ' heading and its '**Question.**' paragraph (without the label)."""
    import nbformat

    if not notebook.exists():
        return fallback, ""
    nb = nbformat.read(notebook, as_version=4)
    title, question = fallback, ""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for paragraph in re.split(r"\n\s*\n", cell.source):
            stripped = paragraph.strip()
            if title == fallback and stripped.startswith("# "):
                title = stripped[2:].splitlines()[0].strip()
            match = re.match(r"\*\*Question\.?\*\*\.?\s*(.*)", stripped, flags=re.S)
            if match and not question:
                question = " ".join(match.group(1).split())
        if title != fallback:
            break
    return title, question


def _figure_index(figures_dir: Path) -> dict[str, Path]:
    index = {}
    for png in sorted(figures_dir.glob("*.png")):
        index.setdefault(hashlib.sha256(png.read_bytes()).hexdigest(), png)
    return index


def _markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(text)


def _inline_markdown(text: str) -> str:
    out = _markdown(text).strip()
    return out[3:-4] if out.startswith("<p>") and out.endswith("</p>") and out.count("<p>") == 1 else out


def _demote_headings(text: str) -> str:
    """Findings sit under the page's 'Findings' heading: their h1/h2 become h3."""
    return re.sub(r"<(/?)h[12](\s|>)", r"<\1h3\2", text)


def _rebase_links(text: str, source_dir: Path, site_dir: Path) -> str:
    """Relative href/src written for a file in `source_dir` rewritten for a page in `site_dir`."""

    def fix(match: re.Match[str]) -> str:
        attr, url = match.group(1), match.group(2)
        if url.startswith(("#", "/")) or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url):
            return match.group(0)
        path, _, fragment = url.partition("#")
        rebased = Path(os.path.relpath(source_dir / path, site_dir)).as_posix()
        return f'{attr}="{rebased}{"#" + fragment if fragment else ""}"'

    return re.sub(r'\b(href|src)="([^"]*)"', fix, text)


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".highlight")


def _markup(text: str) -> Any:
    from markupsafe import Markup

    return Markup(text)


def _last_line(text: str | None) -> str | None:
    return text.strip().splitlines()[-1] if text and text.strip() else None


def _portable(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return str(path)
