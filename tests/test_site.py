"""The report website: built from notebooks the runner executes here, then opened in headless Chromium.

The build tests need no browser. The browser tests skip, saying why, where Chromium is absent (the Makefile's
set-up installs the Debian package where apt-get works).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup
from cbmir import site_check
from cbmir.config import load_config
from cbmir.report import run_report
from cbmir.site import SiteError, build_site, plan_sections

LONG_ROWS = 200

FIGURE_AND_TABLES = f"""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
from cbmir.config import load_config
from cbmir.plots import save_figure
from cbmir.tables import show

cfg = load_config(config, out_root=out_root)
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([1, 10, 100], [0.6, 0.55, 0.5])
display(Image(save_figure(fig, cfg.figures_dir / "08_summary-curves")))
rng = np.random.default_rng(0)
est = rng.random({LONG_ROWS})
per_class = pd.DataFrame({{"class": [f"CT/organ/finding {{i}}" for i in range({LONG_ROWS})], "P@1": est,
                          "P@1 lo": est - 0.05, "P@1 hi": est + 0.05}})
(cfg.reports_dir / "tables").mkdir(parents=True, exist_ok=True)
per_class.to_csv(cfg.reports_dir / "tables" / "a-per-class.csv", index=False)
display(show(per_class, caption="Precision per class"))
wide = pd.DataFrame(rng.random((3, 30)), columns=[f"measure {{i}}" for i in range(30)])
display(show(wide, caption="Thirty measures"))
"""


def write_notebook(path: Path, title: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'config = "configs/tiny.yaml"\nquick = False\nout_root = None\nmodel = None'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\n**Question.** What does {title.lower()} show?"),
        params,
        nbformat.v4.new_code_cell(body),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def make_project(root: Path) -> Path:
    (root / "nbs").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "data_splits").mkdir()
    write_notebook(root / "nbs" / "a.ipynb", "1. Tables and a figure", FIGURE_AND_TABLES)
    write_notebook(root / "nbs" / "b.ipynb", "2. Per model", "print(f'model is {model}')")
    (root / "data_splits" / "tiny.csv").write_text(
        "filepath,dataset,split,modality,anatomic_region,XR/chest/a,CT/head/b\n"
        "x1.png,toy,train,XR,chest,1,0\nx2.png,toy,test,CT,head,0,1\nx3.png,toy,test,XR,chest,1,0\n"
    )
    (root / "data_splits" / "README.md").write_text(
        "# Tiny data\n\nThree images. See [the manifest](tiny.csv).\n"
    )
    cfg = {
        "name": "tiny",
        "manifest": "data_splits/tiny.csv",
        "data_root": "data",
        "work_dir": "work/tiny",
        "notebooks_dir": "nbs",
        "models": ["m-a", "m-b"],
        "notebooks": [{"name": "b", "per_model": True}, {"name": "a"}],  # the config's order, not the names'
    }
    path = root / "configs" / "tiny.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    config = make_project(root)
    assert run_report(config, html=False) == 0
    (root / "reports" / "tiny" / "a.html").write_text("an old loose HTML copy")
    return root, config


@pytest.fixture(scope="module")
def built(project):
    root, config = project
    return build_site(config)


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(), "html.parser")


def test_landing_page_reads_like_an_abstract(project, built):
    root, _ = project
    index = soup(built.index)
    text = index.get_text(" ")
    assert "m-a" in text and "m-b" in text  # what was compared
    assert "3 images (train 1, test 2), 2 labels, 2 modalities" in text  # on what data
    data_link = index.find("a", string="data card")
    assert data_link["href"] == "data.html" and "Tiny data" in soup(built.site_dir / "data.html").get_text()
    headline = index.select_one("figure.headline img")
    assert (built.site_dir / headline["src"]).resolve() == root / "figures" / "tiny" / "08_summary-curves.png"
    assert "findings.md is absent" in " ".join(text.split())
    contents = [a["href"] for a in index.select("ul.contents a")]
    assert contents == ["b--m-a.html", "b--m-b.html", "a.html"]  # config order; per-model pages grouped
    grouped = index.select("ul.contents > li")[0]
    assert "2. Per model" in grouped.get_text() and len(grouped.select("ul.models li")) == 2
    assert "What does 2. per model show?" in grouped.get_text()


def test_findings_are_read_from_findings_md(project, tmp_path):
    root, config = project
    findings = root / "reports" / "tiny" / "findings.md"
    findings.write_text("## Finding\n\nModel m-a retrieves best: P@1 0.61 [0.52, 0.70].\n")
    try:
        page = soup(build_site(config).index)
    finally:
        findings.unlink()
        build_site(config)  # the other tests see the site without findings
    assert "P@1 0.61 [0.52, 0.70]" in page.select_one("div.findings").get_text()
    assert "absent" not in page.get_text()


def test_analysis_pages_link_notebooks_and_tables_and_reference_figures(project, built):
    root, _ = project
    page = built.site_dir / "a.html"
    html = page.read_text()
    dom = soup(page)
    hrefs = {a["href"] for a in dom.select(".page-meta a")}
    assert {"../a.ipynb", "../../../nbs/a.ipynb", "../tables/a-per-class.csv"} <= hrefs
    for href in hrefs:
        assert (built.site_dir / href).exists(), href
    assert "data:image/png" not in html  # the figure is referenced, not copied
    img = dom.select_one("figure.cbmir-figure img")
    assert (built.site_dir / img["src"]).resolve() == root / "figures" / "tiny" / "08_summary-curves.png"
    codes = dom.select("details.cbmir-code")
    assert codes and not any(d.has_attr("open") for d in codes)  # code folded by default
    assert "save_figure" in codes[-1].get_text()
    long = next(t for t in dom.select("table") if "Precision per class" in t.caption.get_text())
    assert len(long.select("tbody tr")) == LONG_ROWS and long.find_parent("details") is not None
    assert dom.select_one("nav.prevnext a.prev")["href"] == "b--m-b.html"
    per_model = soup(built.site_dir / "b--m-b.html")
    assert "model is m-b" in per_model.get_text() and "2. Per model — m-b" in per_model.title.get_text()
    assert not (root / "reports" / "tiny" / "a.html").exists()  # the loose copy is gone
    assert sum(f.stat().st_size for f in built.files) < 200_000


def test_plan_marks_missing_and_failed_pages(project, tmp_path):
    root, config = project
    cfg = load_config(config, models=["m-a", "m-c"])
    log = json.loads((root / "reports" / "tiny" / "run.json").read_text())
    log["a"]["status"], log["a"]["error"] = "failed", "Traceback...\nValueError: boom"
    (root / "reports" / "tiny" / "run.json").write_text(json.dumps(log))
    try:
        sections = plan_sections(cfg)
    finally:
        log["a"]["status"], log["a"]["error"] = "ok", None
        (root / "reports" / "tiny" / "run.json").write_text(json.dumps(log))
    status = {p.output_name: (p.status, p.error) for s in sections for p in s.pages}
    assert status == {
        "b--m-a": ("ok", None),
        "b--m-c": ("not run", None),
        "a": ("failed", "ValueError: boom"),
    }
    empty = tmp_path / "empty"
    with pytest.raises(SiteError, match="no executed notebook"):
        build_site(load_config(make_project(empty)))


needs_chromium = pytest.mark.skipif(
    site_check.find_chromium() is None,
    reason=f"browser check skipped: {site_check.NO_CHROMIUM}",
)


@needs_chromium
def test_every_page_loads_cleanly_in_chromium(built, tmp_path):
    shot = tmp_path / "landing.png"
    result = site_check.check_site(built.site_dir, screenshot=shot)
    assert result.problems == []
    visited = {p.path.name for p in result.pages}
    assert visited == {f.name for f in built.files if f.suffix == ".html"}
    assert sum(p.tables for p in result.pages) >= 2 and sum(p.images for p in result.pages) >= 2
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size[0] == site_check.VIEWPORT[0] and image.size[1] >= site_check.VIEWPORT[1]


@needs_chromium
def test_the_check_finds_broken_pages(project, built, tmp_path):
    root, _ = project
    shutil.copytree(root, tmp_path / "copy")  # the whole project: the site links to figures and notebooks
    site = tmp_path / "copy" / built.site_dir.relative_to(root)
    bad = (
        "<script>console.error('deliberate error')</script>"
        '<a href="missing.csv">a broken link</a><a href="index.html#nowhere">a missing anchor</a>'
        '<img src="missing.png" alt="x">'
        "<table><tr><td>0.5</td><td>...</td></tr></table><p>5 rows × 22 columns</p>"
        '<a href="https://example.org/">elsewhere</a>'
    )
    page = site / "a.html"
    page.write_text(page.read_text().replace("</main>", bad + "</main>"))
    problems = site_check.check_site(site).problems
    expected = [
        "console error: deliberate error",
        "broken link to missing.csv",
        "link to a missing anchor index.html#nowhere",
        "image did not load",
        "truncated table ('table",
        "truncated table: pandas footer '5 rows × 22 columns'",
    ]
    for text in expected:
        assert any(p.startswith("a.html: ") and text in p for p in problems), (text, problems)
    assert not any(p.startswith("index.html") for p in problems)
