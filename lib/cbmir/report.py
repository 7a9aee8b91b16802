"""The report runner: executes every notebook of a config with papermill, then builds the report's website.

`cbmir report --config configs/radmini.yaml` runs each notebook (once per model where `per_model`), writes
executed notebooks to `reports/<config>/` and a `run.json` with the status and time of every job, then builds
the website `reports/<config>/site/` (`cbmir.site`). A failing notebook is recorded and the run goes on; the
exit status is non-zero if any job failed. Finished pipeline stages (embedding stores, neighbour tables) are reused by the
notebooks unless `--redo` is given.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbmir.config import ReportConfig, load_config, slug


@dataclass
class Job:
    notebook: Path
    output_name: str
    parameters: dict[str, Any]


def plan_jobs(cfg: ReportConfig, only: list[str] | None = None, redo: bool = False) -> list[Job]:
    """Expand the config's notebooks x models into jobs, in run order."""
    jobs: list[Job] = []
    common: dict[str, Any] = {"config": _portable(cfg.path, cfg.root), "quick": cfg.quick, "redo": redo}
    if cfg.out_root is not None:
        common["out_root"] = str(cfg.out_root)
    for entry in cfg.notebooks:
        if only and entry.name not in only:
            continue
        nb = cfg.notebooks_dir / f"{entry.name}.ipynb"
        if not nb.exists():
            raise FileNotFoundError(f"{cfg.path}: notebook {entry.name!r} not found at {nb}")
        models = cfg.models if entry.per_model else [None]
        for model in models:
            params = {**common, **entry.parameters}
            name = entry.name
            if model is not None:
                params["model"] = model
                name = f"{entry.name}--{slug(model)}"
            jobs.append(Job(nb, name, params))
    return jobs


def run_report(
    config: str | Path,
    quick: bool = False,
    redo: bool = False,
    only: list[str] | None = None,
    models: list[str] | None = None,
    out_root: str | Path | None = None,
    html: bool = True,
) -> int:
    """Run every job; return 0 if all succeeded, 1 otherwise (failures are recorded in run.json)."""
    from tqdm.auto import tqdm

    cfg = load_config(config, quick=quick, out_root=out_root, models=models)
    jobs = plan_jobs(cfg, only=only, redo=redo)
    cfg.reports_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.reports_dir / "run.json"
    log: dict[str, Any] = json.loads(log_path.read_text()) if log_path.exists() and only else {}
    failed = []
    bar = tqdm(jobs, desc=f"report {cfg.name}", unit="notebook", disable=False)
    for job in bar:
        bar.set_postfix_str(job.output_name)
        start = time.perf_counter()
        status, error = "ok", None
        try:
            execute(job, cfg)
        except Exception as err:  # one failing notebook must not stop the others
            status, error = "failed", _short_error(err)
            failed.append(job.output_name)
            bar.write(f"FAILED {job.output_name}: {error.splitlines()[-1] if error else err}")
        log[job.output_name] = {
            "notebook": job.notebook.name,
            "parameters": job.parameters,
            "status": status,
            "seconds": round(time.perf_counter() - start, 1),
            "error": error,
        }
        log_path.write_text(json.dumps(log, indent=2, sort_keys=True) + "\n")
    total = sum(v["seconds"] for k, v in log.items() if any(j.output_name == k for j in jobs))
    print(f"report {cfg.name}: {len(jobs) - len(failed)}/{len(jobs)} notebooks ok in {total:.0f} s")
    print(
        f"  notebooks: {_portable(cfg.reports_dir, Path.cwd())}  figures: {_portable(cfg.figures_dir, Path.cwd())}"
    )
    if failed:
        print(f"  failed: {', '.join(failed)} (details in {_portable(log_path, Path.cwd())})")
    # --- site (issue 19): the report website replaces the per-notebook HTML copies (cbmir.site) ---
    site_status = 0
    if html:
        from cbmir.site import build_after_run

        site_status = build_after_run(cfg)
    # --- end site ---
    return 1 if failed or site_status else 0


def execute(job: Job, cfg: ReportConfig) -> Path:
    """Execute one notebook with papermill in the project root; return the executed notebook's path."""
    import papermill as pm

    out = cfg.reports_dir / f"{job.output_name}.ipynb"
    # The kernel inherits this environment: no GUI backend, and no progress bars in the rendered reports
    # (the runner shows its own). Restored afterwards.
    kernel_env = {"MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        pm.execute_notebook(
            str(job.notebook),
            str(out),
            parameters=job.parameters,
            cwd=str(cfg.root),
            kernel_name="python3",
            progress_bar=False,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _make_metadata_portable(out, cfg.root)
    return out


def _make_metadata_portable(notebook: Path, root: Path) -> None:
    """Record papermill's input and output paths relative to the project root, not this machine's paths."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = _portable(Path(meta[key]), root)
    nbformat.write(nb, notebook)


def _portable(path: Path, base: Path) -> str:
    """A path relative to `base` where possible, so logs and notebooks carry no machine-specific prefix."""
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _short_error(err: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    return text[-4000:]


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help="run the report's notebooks for a config (papermill)")
    p.add_argument("--config", default="configs/radmini.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small subset and baseline models (smoke test)")
    p.add_argument("--redo", action="store_true", help="recompute finished stages (embeddings, neighbours)")
    p.add_argument(
        "--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks, e.g. 03_retrieval"
    )
    p.add_argument("--models", nargs="+", metavar="SPEC", help="override the config's models")
    p.add_argument("--out-root", help="write work/, reports/ and figures/ under this folder instead")
    p.add_argument(
        "--no-html", action="store_true", help="skip building the website (reports/<config>/site/)"
    )
    p.set_defaults(
        func=lambda a: run_report(
            a.config,
            quick=a.quick,
            redo=a.redo,
            only=a.only,
            models=a.models,
            out_root=a.out_root,
            html=not a.no_html,
        )
    )
