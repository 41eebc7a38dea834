"""Input pipeline throughput on CIFAR-shaped data, next to the ConvNet's consumption.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--n=4400] [--epochs=3]

Measures, in images per second, on random 32x32x3 uint8 images and binary labels
(the size of imbalanced binary CIFAR-10's training split):
  decode   grain reading PNG-encoded records with `polyjax.data.sources.read`
           (what loading a tfds ArrayRecord split costs; paid once per run);
  stream   a grain streaming pipeline (shuffle from a seed, batch 64 with
           drop_remainder, threaded prefetch), host side only;
  streamed data.pipeline='stream' as training runs it: PNG records decoded per
           batch by grain (`polyjax.streaming.streamed_batches`, prefetching), each
           batch delivered as a global device array sharded over the mesh;
  feed     the in-memory path training uses: per-epoch index array to device,
           batch gather, crop + flip augmentation and normalisation inside jit;
  train    the ConvNet train step on that path (whole epoch in one jit call),
           i.e. how fast the model consumes images.
Each figure is the median over `--epochs` timed passes after one warm-up pass.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from polyjax import losses, placement, steps, streaming, train_state
from polyjax.data import sources
from polyjax.data.preprocess import CIFAR_MEAN, CIFAR_STD, ImagePreprocess
from polyjax.data.stream import stream_split


def timed(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, thread start-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=4400)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--threads", type=int, default=16)
  args = parser.parse_args()
  n, b = args.n, args.batch
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  y = (rng.random(n) < 0.1).astype(np.int32)
  results = {}

  records = [{"image": png(img), "label": int(lab)} for img, lab in zip(x, y)]

  def decode_record(ex):
    with Image.open(io.BytesIO(ex["image"])) as im:
      return {"x": np.asarray(im, np.uint8), "label": np.asarray(ex["label"], np.int32)}

  def decode():
    out = sources.read(records, decode_record, num_threads=args.threads)
    assert out["x"].shape == x.shape

  results["decode"] = n / timed(decode, args.epochs)
  print(f"decode  {results['decode']:12,.0f} images/s", flush=True)

  def stream(epoch=[0]):
    epoch[0] += 1
    ds = (grain.MapDataset.range(n).seed(epoch[0]).shuffle()
          .map(lambda i: {"x": x[i], "y": y[i]}).batch(b, drop_remainder=True))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=args.threads,
                                              prefetch_buffer_size=4 * args.threads))
    count = sum(len(batch["y"]) for batch in it)
    assert count == (n // b) * b

  results["stream"] = (n // b) * b / timed(stream, args.epochs)
  print(f"stream  {results['stream']:12,.0f} images/s", flush=True)

  mesh = placement.make_mesh()
  sh = placement.Shardings(mesh)
  # data.pipeline='stream': nothing decoded up front; each epoch's batches (same
  # order as training) are decoded by grain ahead of the consumer and arrive as
  # global device arrays, this process's rows only.
  split = stream_split(records, np.arange(n), lambda ex: decode_record(ex)["x"], y=y)

  def streamed(epoch=[0]):
    epoch[0] += 1
    idx = steps.epoch_indices(n, b, seed=0, epoch=epoch[0])
    count = 0
    for batch in streaming.streamed_batches(split, idx, sh.batch, num_threads=args.threads):
      jax.block_until_ready(batch)
      count += batch["x"].shape[0]
    assert count == (n // b) * b

  results["streamed"] = (n // b) * b / timed(streamed, args.epochs)
  print(f"streamed{results['streamed']:12,.0f} images/s", flush=True)

  pre = ImagePreprocess(CIFAR_MEAN, CIFAR_STD, augment=True)
  data = jax.device_put({"x": x, "y": y, "group": y, "weight": np.ones(n, np.float32)},
                        sh.replicated)

  @jax.jit
  def feed_epoch(data, idx_SxB, key):
    def body(total, idx_B):
      xb = pre(data["x"][idx_B], rng=jax.random.fold_in(key, idx_B[0]))
      return total + jnp.sum(xb), None
    return jax.lax.scan(body, jnp.zeros(()), idx_SxB)[0]

  def feed(epoch=[0]):
    epoch[0] += 1
    idx = steps.epoch_indices(n, b, seed=0, epoch=epoch[0])
    feed_epoch(data, jax.device_put(idx, sh.stacked_batches), jax.random.key(0)).block_until_ready()

  results["feed"] = (n // b) * b / timed(feed, args.epochs)
  print(f"feed    {results['feed']:12,.0f} images/s", flush=True)

  tx = train_state.make_optimizer(lr=0.01, momentum=0.9, weight_decay=0.0)
  model_def, state = train_state.create(model_name="convnet", model_kwargs={},
                                        in_shape=(32, 32, 3), num_classes=2, num_groups=2,
                                        tx=tx, seed=0)
  loss_fn = losses.get_loss("ce", class_counts=np.bincount(y), group_counts=np.bincount(y))
  epoch_fn = steps.make_train_epoch(
      steps.make_train_step(model_def=model_def, loss_fn=loss_fn, tx=tx, preprocess=pre), sh)
  holder = {"state": jax.device_put(state, sh.replicated)}

  def train(epoch=[0]):
    epoch[0] += 1
    idx = steps.epoch_indices(n, b, seed=0, epoch=epoch[0])
    holder["state"], obj = epoch_fn(holder["state"], data, jax.device_put(idx, sh.stacked_batches))
    obj.block_until_ready()

  results["train"] = (n // b) * b / timed(train, args.epochs)
  print(f"train   {results['train']:12,.0f} images/s", flush=True)

  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} host cores, "
        f"load average {os.getloadavg()[0]:.1f}, jax {jax.__version__}, {platform.node()}")
  print(f"# n={n} images 32x32x3 uint8, batch {b}, grain threads {args.threads}, "
        f"median of {args.epochs} passes")
  print(f"input pipeline / ConvNet consumption: decode {results['decode'] / results['train']:.1f}x, "
        f"stream {results['stream'] / results['train']:.1f}x, "
        f"streamed {results['streamed'] / results['train']:.1f}x, "
        f"feed {results['feed'] / results['train']:.1f}x")


if __name__ == "__main__":
  main()
