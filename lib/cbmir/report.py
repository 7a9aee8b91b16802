"""The report runner: executes every notebook of a config with papermill, then builds the report's website.

`cbmir report --config configs/radmini.yaml` runs each notebook (once per model where `per_model`), writes
executed notebooks to `reports/<config>/` and a `run.json` with the status and time of every job, then builds
the website `reports/<config>/site/` (`cbmir.site`). A failing notebook is recorded and the run goes on; the
exit status is non-zero if any job failed. Finished pipeline stages (embedding stores, neighbour tables) are reused by the
notebooks unless `--redo` is given.

Interruption: each notebook is executed into `reports/<config>/.partial/` and moved into place only when it is
complete; `run.json` is rewritten atomically before and after each job, and a job counts as done only once
its entry says `ok`. While a run is going on, `work/<config>/report-in-progress.json` exists; a run started
while it is still there (the last one was killed) resumes: jobs recorded `ok` with the same parameters whose
outputs exist are reused, the others run (`--redo` runs everything). Output folders that cannot be written are
reported before any notebook runs.

Stale outputs: the runner owns `figures/<config>/` and `reports/<config>/tables/`. Each job's entry in
`run.json` lists the files it wrote there (`outputs`: created or changed while it ran). After a run in which
every job succeeded, files in those two folders that no job of `run.json` wrote (left by earlier runs, e.g. a
figure a notebook no longer makes or a model no longer in the config) are removed and listed. Nothing is
removed after a failed job, or when an entry of `run.json` predates the `outputs` record.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbmir.config import ReportConfig, load_config, slug
from cbmir.errors import CbmirError

RUN_LOG = "run.json"
IN_PROGRESS = "report-in-progress.json"  # under the config's work_dir while a run is going on
PARTIAL_DIR = ".partial"  # under reports/<config>/: notebooks being executed


class OutputFolderError(CbmirError):
    """An output folder of a report run cannot be created or written; nothing was run."""


@dataclass
class Job:
    notebook: Path
    output_name: str
    parameters: dict[str, Any]
    skip: str | None = None  # why the job is not run (recorded as "skipped" with this reason)


def plan_jobs(cfg: ReportConfig, only: list[str] | None = None, redo: bool = False) -> list[Job]:
    """Expand the config's notebooks x models into jobs, in run order."""
    unknown = sorted(set(only or ()) - {entry.name for entry in cfg.notebooks})
    if unknown:
        raise ValueError(
            f"parameter 'only': {cfg.path.name} has no notebook(s) {unknown}; "
            f"it has {[entry.name for entry in cfg.notebooks]}"
        )
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
        if entry.per_model and entry.models == "image-text":
            from cbmir.models import has_text_tower

            models = [m for m in cfg.models if has_text_tower(m)]
            if not models:
                reason = (
                    f"no model of this config has a text encoder ({', '.join(cfg.models)} are image-only), "
                    "so text-to-image retrieval cannot run; add an image-text model (e.g. biomedclip)"
                )
                jobs.append(Job(nb, entry.name, {**common, **entry.parameters}, skip=reason))
                continue
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
    for folder, what in ((cfg.reports_dir, "reports"), (cfg.figures_dir, "figures"), (cfg.work_dir, "work")):
        check_writable(folder, what)
    log_path = cfg.reports_dir / RUN_LOG
    marker = cfg.work_dir / IN_PROGRESS
    resuming = marker.exists() and not redo
    log = read_log(log_path) if (only or resuming) else {}
    reuse = {j.output_name for j in jobs if resuming and is_finished(j, log.get(j.output_name), cfg)}
    write_json_atomic(marker, {"config": str(cfg.path), "started": time.time(), "pid": os.getpid()})
    write_json_atomic(log_path, log)
    if reuse:
        print(f"report {cfg.name}: resuming an interrupted run; {len(reuse)} finished notebook(s) reused")
    failed = []
    bar = tqdm(jobs, desc=f"report {cfg.name}", unit="notebook", disable=False)
    for job in bar:
        if job.output_name in reuse:
            continue
        if job.skip:
            log[job.output_name] = _entry(job, "skipped", job.skip, 0.0)
            write_json_atomic(log_path, log)
            bar.write(f"skipped {job.output_name}: {job.skip}")
            continue
        bar.set_postfix_str(job.output_name)
        start = time.perf_counter()
        log[job.output_name] = _entry(job, "running", None, 0.0)  # not done until it says ok
        write_json_atomic(log_path, log)
        status, error = "ok", None
        before = snapshot_outputs(cfg)
        try:
            execute(job, cfg)
        except Exception as err:  # one failing notebook must not stop the others
            status, error = "failed", _short_error(err)
            failed.append(job.output_name)
            bar.write(f"FAILED {job.output_name}: {error.splitlines()[-1] if error else err}")
        log[job.output_name] = _entry(job, status, error, time.perf_counter() - start)
        log[job.output_name]["outputs"] = written_since(before, snapshot_outputs(cfg))
        write_json_atomic(log_path, log)
    marker.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (cfg.reports_dir / PARTIAL_DIR).rmdir()  # only when empty
    total = sum(v["seconds"] for k, v in log.items() if any(j.output_name == k for j in jobs))
    skipped = [j.output_name for j in jobs if j.skip]
    ran = len(jobs) - len(skipped)
    print(f"report {cfg.name}: {ran - len(failed)}/{ran} notebooks ok in {total:.0f} s")
    if skipped:
        print(f"  skipped: {', '.join(skipped)} (reason in {_portable(log_path, Path.cwd())})")
    print(
        f"  notebooks: {_portable(cfg.reports_dir, Path.cwd())}  figures: {_portable(cfg.figures_dir, Path.cwd())}"
    )
    if failed:
        print(f"  failed: {', '.join(failed)} (details in {_portable(log_path, Path.cwd())})")
    else:
        removed = remove_stale_outputs(cfg, log)
        if removed:
            print(f"  removed {len(removed)} stale output(s) no job of this run wrote: {', '.join(removed)}")
    # --- site (issue 19): the report website replaces the per-notebook HTML copies (cbmir.site) ---
    site_status = 0
    if html:
        from cbmir.site import build_after_run

        site_status = build_after_run(cfg)
    # --- end site ---
    return 1 if failed or site_status else 0


def _entry(job: Job, status: str, error: str | None, seconds: float) -> dict[str, Any]:
    return {
        "notebook": job.notebook.name,
        "parameters": job.parameters,
        "status": status,
        "seconds": round(seconds, 1),
        "error": error,
    }


def owned_folders(cfg: ReportConfig) -> list[Path]:
    """The output folders the runner owns and keeps free of stale files: figures/<config>/, reports/<config>/tables/."""
    return [cfg.figures_dir, cfg.reports_dir / "tables"]


def snapshot_outputs(cfg: ReportConfig) -> dict[str, tuple[int, int, int]]:
    """{path (relative to the project root where possible): (mtime_ns, size, inode)} of the files in the owned
    folders (hidden files skipped)."""
    out = {}
    for folder in owned_folders(cfg):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.name.startswith(".") or not path.is_file():
                continue
            st = path.stat()
            out[_portable(path, cfg.root)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def written_since(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """The files of `after` that are new or changed since `before` (sorted)."""
    return sorted(p for p, stat in after.items() if before.get(p) != stat)


def remove_stale_outputs(cfg: ReportConfig, log: dict[str, Any]) -> list[str]:
    """Delete the files of the owned folders that no job entry of `log` lists in its `outputs`; return them.

    Removes nothing (and returns []) when an entry has no `outputs` record (written by an older runner).
    """
    entries = [v for v in log.values() if isinstance(v, dict)]
    if not entries or any("outputs" not in v for v in entries):
        return []
    keep = {p for v in entries for p in v["outputs"]}
    removed = []
    for rel in sorted(set(snapshot_outputs(cfg)) - keep):
        path = Path(rel) if Path(rel).is_absolute() else cfg.root / rel
        path.unlink(missing_ok=True)
        removed.append(rel)
    return removed


def is_finished(job: Job, entry: dict[str, Any] | None, cfg: ReportConfig) -> bool:
    """A job of an interrupted run that need not run again: recorded ok, same parameters, outputs present."""
    if not entry or entry.get("status") != "ok" or entry.get("parameters") != job.parameters:
        return False
    return (cfg.reports_dir / f"{job.output_name}.ipynb").is_file()


def read_log(path: Path) -> dict[str, Any]:
    """The jobs recorded in `run.json` ({} when there is none or it is not a readable JSON mapping)."""
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and write a scratch file in it; raise `OutputFolderError` if either fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cbmir-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputFolderError(
            f"{folder}: the {what} folder cannot be written ({reason}); nothing was run"
        ) from None


def execute(job: Job, cfg: ReportConfig) -> Path:
    """Execute one notebook with papermill in the project root; return the executed notebook's path.

    The notebook is executed into `reports/<config>/.partial/` and moved into place when papermill returns,
    so an interrupted run never leaves a half-executed notebook under the final name. A notebook that raised
    is moved into place too (it shows the error), and the error is raised again.
    """
    import papermill as pm

    out = cfg.reports_dir / f"{job.output_name}.ipynb"
    partial = cfg.reports_dir / PARTIAL_DIR / out.name
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    # The kernel inherits this environment: no GUI backend, and no progress bars in the rendered reports
    # (the runner shows its own). Restored afterwards.
    kernel_env = {"MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    try:
        pm.execute_notebook(
            str(job.notebook),
            str(partial),
            parameters=job.parameters,
            cwd=str(cfg.root),
            kernel_name="python3",
            progress_bar=False,
        )
    except Exception:
        if partial.is_file():
            _make_metadata_portable(partial, cfg.root, out)
            os.replace(partial, out)
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _make_metadata_portable(partial, cfg.root, out)
    os.replace(partial, out)
    return out


def _make_metadata_portable(notebook: Path, root: Path, output: Path | None = None) -> None:
    """Record papermill's input and output paths relative to the project root, not this machine's paths.

    `output` is where the notebook will end up (it is executed under a temporary name).
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    meta = nb.metadata.get("papermill", {})
    if output is not None and meta.get("output_path"):
        meta["output_path"] = str(output)
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
