"""Training images/s of the rate-distortion loop: the loop as first written against the one shipped now.

    python scripts/train_speed.py [--preset hq] [--dataset mnist] [--images 6400] [--rounds 3] [--threads N]

"before": one ``tf.function`` step per batch fed a numpy slice (``tf.constant``), its three values read back
with ``float()`` every step (the loop issue 14 item 6 measured). "now": :class:`EpochRunner` (batches cut and
sums kept inside TensorFlow, one read-back per epoch). Both run the same step (:func:`make_train_step`) on the
same real images, alternating, after one untimed warm-up each (tracing). Prints images/s, CPU seconds per
wall second (how many cores TensorFlow kept busy), the median ratio and the CPU flags: compare ratios from
one run, not absolute rates across machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="hq")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--images", type=int, default=6400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="TensorFlow pools (default: TensorFlow's own)")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from cae_edge import datasets
    from cae_edge.benchmark.sysinfo import collect
    from cae_edge.train import ratedistortion as rd
    from cae_edge.train.model import build_decoder, build_encoder
    from cae_edge.train.options import RDOptions, TrainOptions

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    opts = TrainOptions(dataset=args.dataset, rd=RDOptions(preset=args.preset)).validated()
    cfg, bs = opts.model_config(), opts.batch_size
    images = (datasets.load(args.dataset).x_train[: args.images].astype(np.float32) / 255.0)[..., None]

    def new_step():
        keras.utils.set_random_seed(0)
        enc, dec = build_encoder(cfg), build_decoder(cfg)
        prior = rd._Prior(tf, cfg.latent_dim)
        lam = tf.Variable(opts.rd.lam, dtype=tf.float32, trainable=False)
        target = 8.0 * opts.rd.target_bytes
        return rd.make_train_step(enc, dec, prior, keras.optimizers.Adam(1e-3), lam, target_bits=target)

    step_before = tf.function(new_step(), reduce_retracing=True)

    def before(x: np.ndarray) -> None:
        sums = np.zeros(3)
        for i in range(0, len(x), bs):
            batch = x[i : i + bs]
            sums += np.array([float(v) for v in step_before(tf.constant(batch))]) * len(batch)

    runner = rd.EpochRunner(new_step(), bs)
    loops = {"before": before, "now": runner.run}
    for loop in loops.values():
        loop(images)  # the shape timed: "now" traces per images shape
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(args.rounds):
        for name, loop in loops.items():
            c0, t0 = time.process_time(), time.perf_counter()
            loop(images)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates[name].append(len(images) / wall)
            print(
                f"round {r + 1} {name:6s} {len(images) / wall:7.0f} images/s  "
                f"cpu/wall {cpu / wall:.2f}  load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in rates.items()}
    info = collect()
    print(
        f"{args.dataset} {args.preset}, batch {bs}, {len(images)} images, threads "
        f"{args.threads or 'TensorFlow default'}, {os.cpu_count()} cores, {info.cpu_model}, "
        f"flags {' '.join(info.cpu_flags)}: "
        f"median before {med['before']:.0f}, now {med['now']:.0f} images/s, now/before "
        f"{med['now'] / med['before']:.2f}"
    )


if __name__ == "__main__":
    main()
