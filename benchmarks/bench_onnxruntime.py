"""ONNX Runtime against cbmir's own CPU path (cbmir.accelerate, torch.compile) for the offline encoders, fp32.

Each encoder is prepared by `cbmir.accelerate.optimise_for_inference` in fp32 twice: eagerly (then exported to
ONNX with the TorchScript exporter, opset 17, and run by ONNX Runtime's CPU provider with one intra-op thread per
torch thread and every graph optimisation) and with `compile="on"` (what a long run uses). Both run the same
random batch (batch 1 for models that cbmir micro-batches one image at a time, else `--batch`), best of
`--repeats` calls each; the output cosine of ONNX Runtime to the original module is printed. bf16 is left
out: ONNX Runtime's CPU provider has no bf16 kernels for these operators.

    python benchmarks/bench_onnxruntime.py
    python benchmarks/bench_onnxruntime.py --models litemedsam --no-append
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from results import append_results, best_seconds, command_line

DEFAULT_MODELS = "litemedsam,xception-imagenet,dinov2-s14-imgfocus"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    from cbmir.accelerate import cpu_info, large_tensors_on_heap, optimise_for_inference
    from cbmir.models import load_encoder
    from PIL import Image

    info = cpu_info()
    threads = torch.get_num_threads()
    lines = [
        f"- CPU: {info['model']}, {info['cores']} cores, torch threads {threads}; onnxruntime {ort.__version__}",
        f"- fp32; best of {args.repeats} calls after one warm-up; torch = cbmir.accelerate with compile 'on' (large "
        "tensors from the heap, as extraction runs it); ORT = the eager rewritten module exported to ONNX",
        "",
        "| encoder | batch | torch img/s | ORT img/s | ORT / torch | ORT min cosine to the original | load |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            encoder = load_encoder(name)
            shape = tuple(encoder.transform(Image.new("RGB", (64, 64))).shape)
            example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
            eager, eager_info = optimise_for_inference(encoder, "cpu", "fp32", example=example, compile="off")
            batch = 1 if eager.module.micro_batch else args.batch
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
            torch._dynamo.reset()
            fast, _ = optimise_for_inference(
                encoder, "cpu", "fp32", example=example, compile="on", batch_size=batch
            )
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(eager.module.module, (x,), str(path), dynamo=False, opset_version=17)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            got = session.run(None, feed)[0]
            with torch.inference_mode():
                want = encoder.module(x).numpy()
            cosine = float(
                ((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min()
            )
            with torch.inference_mode(), large_tensors_on_heap():
                seconds_torch = best_seconds(lambda m=fast.module, x=x: m(x), args.repeats, warmup=True)
            seconds_ort = best_seconds(lambda s=session, f=feed: s.run(None, f), args.repeats, warmup=True)
            row = (
                f"| {name} | {batch} | {batch / seconds_torch:.2f} | {batch / seconds_ort:.2f} | "
                f"{seconds_torch / seconds_ort:.2f} | {cosine:.7f} | {os.getloadavg()[0]:.1f} |"
            )
            print(row, flush=True)
            lines.append(row)
    if not args.no_append:
        command = command_line(__file__, argv)
        append_results("bench_onnxruntime: ONNX Runtime against the torch CPU path (fp32)", command, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
