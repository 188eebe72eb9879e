"""Re-time saved ONNX files side by side in onnxruntime, as ``deploy_speed.py`` times them.

Each file gets a CPU session (``geta.export.onnx.inference_session``, ``--threads`` intra-op threads);
at each batch size the sessions are timed interleaved by ``geta.run.latency.interleaved_medians`` (an
order shuffled every round, one untimed warm-up call each, ``--min-repeats`` rounds and then until
``--budget-s`` seconds have passed or ``--max-repeats`` rounds are done) on the same inputs: every
input's dynamic first dimension set to the batch size, floats uniform in [0, 1), integers 1 (valid token
ids and an all-ones mask for a text encoder). Only latency is measured, never accuracy. The table gives
median ms per ``session.run`` and ``first ms / file ms`` (above 1: faster than the first file).

Usage, e.g. on the files ``deploy_speed.py --out D`` wrote:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_latency.py D/vgg7/float-compact.onnx \\
        D/vgg7/geta.onnx D/vgg7/ort-ptq.onnx --batch 1 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime

from geta.export.onnx import inference_session
from geta.run.latency import interleaved_medians


def _feed(session: onnxruntime.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Inputs for ``session`` at ``batch`` rows: symbolic or batch-like first dimensions set to ``batch``."""
    feed = {}
    for entry in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in entry.shape]
        if shape:
            shape[0] = batch
        if "float" in entry.type:
            feed[entry.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
        else:
            feed[entry.name] = np.ones(shape, dtype=np.int64 if "int64" in entry.type else np.int32)
    return feed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="ONNX files taking the same inputs")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes timed")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--min-repeats", type=int, default=10)
    parser.add_argument("--max-repeats", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=10.0, help="seconds of rounds per batch size")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    if min(args.batch) < 1 or args.threads < 1 or args.min_repeats < 1 or args.budget_s < 0:
        parser.error("--batch, --threads and --min-repeats must be at least 1, --budget-s at least 0")
    sessions = [inference_session(path, threads=args.threads) for path in args.files]
    results, rounds = {}, {}
    for batch in args.batch:
        results[batch], rounds[batch] = interleaved_medians(
            sessions, _feed(sessions[0], batch), min_repeats=args.min_repeats, max_repeats=args.max_repeats,
            budget_s=args.budget_s)
    print(f"onnxruntime, {args.threads} thread(s); interleaved rounds: "
          + ", ".join(f"{rounds[b]} at batch {b}" for b in args.batch))
    print(f"| file | {' | '.join(f'batch {b} ms' for b in args.batch)} | "
          f"{' | '.join(f'vs first (b{b})' for b in args.batch)} |")
    print("|---|" + "---|" * (2 * len(args.batch)))
    for index, path in enumerate(args.files):
        times = " | ".join(f"{results[b][index]:.3f}" for b in args.batch)
        ratios = " | ".join(f"{results[b][0] / results[b][index]:.3f}x" for b in args.batch)
        print(f"| {path} | {times} | {ratios} |")


if __name__ == "__main__":
    main()
