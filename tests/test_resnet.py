"""ResNets: shapes, BatchNorm state, a ResNet-50 step at 224, pretrained loading, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from polyjax import losses, resnet, steps, train_state


def _batch(in_shape, batch=2):
  rng = np.random.default_rng(0)
  return {"x": jnp.asarray(rng.standard_normal((batch,) + in_shape), jnp.float32),
          "y": jnp.arange(batch, dtype=jnp.int32) % 2,
          "group": jnp.arange(batch, dtype=jnp.int32) % 2,
          "weight": jnp.ones((batch,), jnp.float32)}


LOSS = losses.get_loss("ce", class_counts=np.array([1, 1]), group_counts=np.array([1, 1]))
SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def small():
  """A narrow CIFAR ResNet-18 (init_channels 4), built once: CPU compiles are slow."""
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=0.0)
  model_def, state = train_state.create(
      model_name="cifar_resnet18", model_kwargs={"init_channels": 4}, in_shape=SHAPE,
      num_classes=2, num_groups=2, tx=tx, seed=0)
  return tx, model_def, state


def _changed(a, b):
  return jax.tree.map(lambda u, v: bool(np.any(np.asarray(u) != np.asarray(v))), a, b)


def test_cifar_resnet18_step_updates_params_and_batch_stats(small):
  tx, model_def, state = small
  step = jax.jit(steps.make_train_step(model_def=model_def, loss_fn=LOSS, tx=tx))
  new, obj = step(state, _batch(SHAPE))
  assert np.isfinite(obj)
  assert all(jax.tree.leaves(_changed(state.params, new.params)))
  assert all(jax.tree.leaves(_changed(state.model_state, new.model_state)))
  logits, ms = jax.jit(lambda s, x: model_def.apply(s, x, train=False))(new, jnp.zeros((3,) + SHAPE))
  assert logits.shape == (3, 2)
  assert not any(jax.tree.leaves(_changed(new.model_state, ms)))  # eval leaves stats alone


def test_freeze_features_trains_only_the_head_with_frozen_batchnorm(small):
  _, model_def, state = small
  # What experiment.build does for model.freeze_features: head-only optimizer, and the
  # evaluation graph (running BatchNorm statistics) in training.
  tx = train_state.head_only(train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=1e-3))
  frozen_def = train_state.ModelDef(train=model_def.eval, eval=model_def.eval)
  state = state.replace(opt_state=tx.init(state.params))
  step = jax.jit(steps.make_train_step(model_def=frozen_def, loss_fn=LOSS, tx=tx))
  new, obj = step(state, _batch(SHAPE))
  assert np.isfinite(obj)
  changed = _changed(state.params, new.params)
  assert all(jax.tree.leaves(changed["head"]))
  assert not any(jax.tree.leaves({k: v for k, v in changed.items() if k != "head"}))
  assert not any(jax.tree.leaves(_changed(state.model_state, new.model_state)))


@pytest.mark.parametrize("depth,params", [(18, 11_169_858), (34, 21_278_018), (50, 23_504_450)])
def test_cifar_resnet_parameter_counts(depth, params):
  # The standard CIFAR ResNets (kuangliu/pytorch-cifar: 11,173,962 / 21,282,122 /
  # 23,520,842 parameters with 10 classes) less their 10-class head, plus a 2-class one.
  model = nnx.eval_shape(lambda: resnet.cifar_resnet(depth)(
      in_shape=(32, 32, 3), num_classes=2, rngs=nnx.Rngs(0)))
  assert sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param))) == params


@pytest.fixture(scope="module")
def resnet50():
  return resnet.imagenet_resnet50(in_shape=(224, 224, 3), num_classes=2, rngs=nnx.Rngs(0))


def _as_torchvision(model, offset=0.0):
  """The model's variables as a torchvision-style state dict (PyTorch layouts)."""
  out = {"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32),
         "bn1.num_batches_tracked": np.zeros((), np.int64)}
  for key, (var, _) in resnet._targets(model).items():
    a = np.asarray(var.get_value()) + offset
    out[key] = np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a
  return out


def test_resnet50_pretrained_loading_checks_every_shape(resnet50, tmp_path):
  sd = _as_torchvision(resnet50, offset=0.5)
  assert len([k for k in sd if not k.startswith("fc.") and "num_batches" not in k]) == 265  # 53 convs, 53 BatchNorms x 4
  before = {k: np.asarray(v.get_value()) for k, (v, _) in resnet._targets(resnet50).items()}

  bad = dict(sd)
  bad["layer3.2.conv2.weight"] = bad["layer3.2.conv2.weight"][:, :-1]
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=r"'layer3.2.conv2.weight' has shape \(256, 255, 3, 3\)"):
    resnet.load_torchvision_weights(resnet50, str(tmp_path / "bad.npz"))
  missing = {k: v for k, v in sd.items() if k != "layer4.1.bn2.running_var"}
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(ValueError, match="missing array 'layer4.1.bn2.running_var'"):
    resnet.load_torchvision_weights(resnet50, str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "extra.npz", **sd, **{"layer5.0.conv1.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="unexpected array 'layer5.0.conv1.weight'"):
    resnet.load_torchvision_weights(resnet50, str(tmp_path / "extra.npz"))
  for k, (v, _) in resnet._targets(resnet50).items():  # failures changed nothing
    np.testing.assert_array_equal(np.asarray(v.get_value()), before[k])

  head = np.asarray(resnet50.head.kernel.get_value())
  np.savez(tmp_path / "ok.npz", **sd)
  resnet.load_torchvision_weights(resnet50, str(tmp_path / "ok.npz"))
  for k, (v, _) in resnet._targets(resnet50).items():
    np.testing.assert_allclose(np.asarray(v.get_value()), before[k] + 0.5, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(resnet50.head.kernel.get_value()), head)  # head not loaded


def test_resnet50_train_step_at_224(resnet50):
  """One SGD step of the ImageNet ResNet-50 on a (2, 224, 224, 3) batch, through the
  project's train step: finite objective and gradients that reach the stem."""
  train_def, params, model_state = nnx.split(resnet50, nnx.Param, ...)
  eval_def = nnx.graphdef(nnx.view(resnet50, use_running_average=True, raise_if_not_found=False))
  model_def = train_state.ModelDef(train=train_def, eval=eval_def)
  tx = train_state.make_optimizer(lr=0.1, momentum=0.0, weight_decay=0.0)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 model_state=model_state, opt_state=tx.init(params),
                                 rng=jax.random.key(0), adv_probs=jnp.full((2,), 0.5))
  step = jax.jit(steps.make_train_step(model_def=model_def, loss_fn=LOSS, tx=tx))
  new, obj = step(state, _batch((224, 224, 3)))
  assert np.isfinite(obj)
  for leaf in jax.tree.leaves(new.params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert all(jax.tree.leaves(_changed(state.params["conv1"], new.params["conv1"])))
  assert all(jax.tree.leaves(_changed(state.model_state["bn1"], new.model_state["bn1"])))


def _resnet32_params(num_classes, head):
  """ResNet-32's parameters by arithmetic: 3x3 convolutions, two per BatchNorm (scale and
  bias), option-A shortcuts with none, and the head."""
  convs = [(3, 16)] + [(16, 16)] * 10 + [(16, 32)] + [(32, 32)] * 9 + [(32, 64)] + [(64, 64)] * 9
  return (sum(9 * cin * cout + 2 * cout for cin, cout in convs)
          + 64 * num_classes + (num_classes if head == "linear" else 0))


@pytest.mark.parametrize("num_classes,head", [(10, "linear"), (10, "normed"), (100, "normed")])
def test_resnet32_parameter_count(num_classes, head):
  model = nnx.eval_shape(lambda: resnet.resnet32(in_shape=SHAPE, num_classes=num_classes,
                                                 head=head, rngs=nnx.Rngs(0)))
  n = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert n == _resnet32_params(num_classes, head)
  assert len([b for i in (1, 2, 3) for b in getattr(model, f"layer{i}")]) == 15  # 6 * 5 + 2 = 32
  if (num_classes, head) == (10, "linear"):
    assert n == 464_154 and round(n / 1e6, 2) == 0.46  # LDAM-DRW's table: 0.46M


def test_option_a_shortcut_matches_numpy():
  x = np.random.default_rng(0).standard_normal((2, 8, 6, 16)).astype(np.float32)
  out = np.asarray(resnet.pad_shortcut(jnp.asarray(x), 32))
  ref = np.zeros((2, 4, 3, 32), np.float32)
  ref[..., 8:24] = x[:, 0::2, 0::2, :]
  np.testing.assert_array_equal(out, ref)


@pytest.fixture(scope="module")
def resnet32_normed():
  """ResNet-32 with the cosine head, initialised as a run initialises it (one jitted init)."""
  tx = train_state.make_optimizer(lr=0.1, momentum=0.9, weight_decay=2e-4)
  model_def, state = train_state.create(
      model_name="resnet32", model_kwargs={"head": "normed"}, in_shape=SHAPE,
      num_classes=2, num_groups=2, tx=tx, seed=0)
  return tx, model_def, state


def test_resnet32_init_is_untruncated_kaiming_normal(resnet32_normed):
  params = resnet32_normed[2].params
  w = np.concatenate([np.ravel(params["layer3"][b]["conv1"]["kernel"]) for b in range(1, 5)])
  sigma = np.sqrt(2.0 / (9 * 64))  # kaiming_normal_: std sqrt(2 / fan_in)
  n = w.size  # 147,456 draws: the std within 5 standard errors, 1/sqrt(2n) relative.
  assert abs(w.std() / sigma - 1) < 5 / np.sqrt(2 * n)
  # PyTorch's normal is not truncated (Flax's he_normal is, at 2 std): P(|z| > 2) = 4.55%.
  p = 0.0455
  assert abs(np.mean(np.abs(w) > 2 * sigma) - p) < 5 * np.sqrt(p * (1 - p) / n)
  kernel = np.asarray(params["head"]["kernel"])  # LDAM-DRW's NormedLinear: unit columns
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
  # A linear head's bias: nn.Linear's U(+-1/sqrt(64)).
  bias = np.asarray(resnet.torch_linear_bias(64)(jax.random.key(0), (1000,)))
  assert np.all(np.abs(bias) <= 1 / 8) and abs(np.abs(bias).max() - 1 / 8) < 1e-2


def test_resnet32_builds_as_a_run_builds_it_and_gives_cosines(resnet32_normed):
  # Forward only: a ResNet-32 train step takes about a minute of CPU to compile; the
  # step itself is the one every model shares (tests/test_heads.py runs it with LDAM).
  _, model_def, state = resnet32_normed
  assert state.params["head"]["kernel"].shape == (64, 2)
  logits, _ = jax.jit(lambda s, x: model_def.apply(s, x, train=False))(
      state, _batch(SHAPE, batch=4)["x"])
  assert logits.shape == (4, 2) and np.all(np.abs(np.asarray(logits)) <= 1 + 1e-5)
