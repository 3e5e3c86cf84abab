"""PyTorch reference networks of DC/DSA/DM/MTT, for checking our Flax models.

Reimplemented from the description of the reference `networks.py` /
`utils.get_network` (Zhao et al.): same layers, shapes and parameter counts,
in the reference's NCHW layout. Not part of the library or the tests (those
never import torch). Two uses:

  python benchmarks/torch_models.py counts   # parameter counts for the tests
  python benchmarks/torch_models.py check    # copy weights into the Flax
                                             # models and compare outputs,
                                             # embeddings and BN statistics

The reference decides the MNIST padding by "one input channel"; our Flax
models by "28x28 input". Both agree on the 28x28x1 and 32x32x3 shapes
compared here.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _norm2d(kind, c, shape_hw=None):
  """Norm layers by the reference's names ('instancenorm', ...)."""
  if kind == "instancenorm":
    return nn.GroupNorm(c, c, affine=True)
  if kind == "groupnorm":
    return nn.GroupNorm(4, c, affine=True)
  if kind == "batchnorm":
    return nn.BatchNorm2d(c)
  if kind == "layernorm":
    return nn.LayerNorm([c, *shape_hw], elementwise_affine=True)
  raise ValueError(kind)


class ConvNet(nn.Module):
  """The reference ConvNet, with the reference's argument names and values
  (net_norm 'instancenorm' | 'batchnorm' | 'layernorm' | 'groupnorm' |
  'none', net_pooling 'avgpooling' | 'maxpooling' | 'none')."""

  def __init__(
    self,
    channel,
    num_classes,
    net_width=128,
    net_depth=3,
    net_act="relu",
    net_norm="instancenorm",
    net_pooling="avgpooling",
    im_size=(32, 32),
  ):
    super().__init__()
    feats = []
    h, w = (32, 32) if im_size[0] == 28 else im_size
    c = channel
    for d in range(net_depth):
      pad = 3 if channel == 1 and d == 0 else 1
      feats.append(nn.Conv2d(c, net_width, kernel_size=3, padding=pad))
      if net_norm != "none":
        feats.append(_norm2d(net_norm, net_width, (h, w)))
      feats.append(
        {
          "relu": nn.ReLU(),
          "sigmoid": nn.Sigmoid(),
          "leakyrelu": nn.LeakyReLU(0.01),
        }[net_act]
      )
      c = net_width
      if net_pooling != "none":
        feats.append(
          {"avgpooling": nn.AvgPool2d, "maxpooling": nn.MaxPool2d}[net_pooling](
            2, 2
          )
        )
        h, w = h // 2, w // 2
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Linear(net_width * h * w, num_classes)

  def embed(self, x):
    return self.features(x).flatten(1)

  def forward(self, x):
    return self.classifier(self.embed(x))


class MLP(nn.Module):
  def __init__(self, channel, num_classes, im_size=(32, 32)):
    super().__init__()
    self.fc_1 = nn.Linear(channel * im_size[0] * im_size[1], 128)
    self.fc_2 = nn.Linear(128, 128)
    self.fc_3 = nn.Linear(128, num_classes)

  def embed(self, x):
    return F.relu(self.fc_2(F.relu(self.fc_1(x.flatten(1)))))

  def forward(self, x):
    return self.fc_3(self.embed(x))


class LeNet(nn.Module):
  def __init__(self, channel, num_classes):
    super().__init__()
    self.features = nn.Sequential(
      nn.Conv2d(channel, 6, 5, padding=2 if channel == 1 else 0),
      nn.ReLU(),
      nn.MaxPool2d(2, 2),
      nn.Conv2d(6, 16, 5),
      nn.ReLU(),
      nn.MaxPool2d(2, 2),
    )
    self.fc_1 = nn.Linear(16 * 5 * 5, 120)
    self.fc_2 = nn.Linear(120, 84)
    self.fc_3 = nn.Linear(84, num_classes)

  def embed(self, x):
    x = self.features(x).flatten(1)
    return F.relu(self.fc_2(F.relu(self.fc_1(x))))

  def forward(self, x):
    return self.fc_3(self.embed(x))


class AlexNet(nn.Module):
  def __init__(self, channel, num_classes, bn=False):
    super().__init__()
    specs = [
      (channel, 128, 5, 4 if channel == 1 else 2, True),
      (128, 192, 5, 2, True),
      (192, 256, 3, 1, False),
      (256, 192, 3, 1, False),
      (192, 192, 3, 1, True),
    ]
    feats = []
    for cin, cout, k, p, pooled in specs:
      feats.append(nn.Conv2d(cin, cout, k, padding=p))
      if bn:
        feats.append(nn.BatchNorm2d(cout))
      feats.append(nn.ReLU())
      if pooled:
        feats.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*feats)
    self.fc = nn.Linear(192 * 4 * 4, num_classes)

  def embed(self, x):
    return self.features(x).flatten(1)

  def forward(self, x):
    return self.fc(self.embed(x))


class VGG11(nn.Module):
  CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

  def __init__(self, channel, num_classes, norm="instancenorm"):
    super().__init__()
    feats, c = [], channel
    for i, item in enumerate(self.CFG):
      if item == "M":
        feats.append(nn.MaxPool2d(2, 2))
        continue
      pad = 3 if channel == 1 and i == 0 else 1
      feats += [
        nn.Conv2d(c, item, 3, padding=pad),
        _norm2d(norm, item),
        nn.ReLU(),
      ]
      c = item
    feats.append(nn.AvgPool2d(1, 1))
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Linear(512, num_classes)

  def embed(self, x):
    return self.features(x).flatten(1)

  def forward(self, x):
    return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride, norm):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = _norm2d(norm, cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = _norm2d(norm, cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False), _norm2d(norm, cout)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
  def __init__(self, channel, num_classes, norm="instancenorm"):
    super().__init__()
    self.conv1 = nn.Conv2d(channel, 64, 3, 1, 1, bias=False)
    self.bn1 = _norm2d(norm, 64)
    blocks, c = [], 64
    for stage, width in enumerate((64, 128, 256, 512)):
      for b in range(2):
        stride = 2 if stage > 0 and b == 0 else 1
        blocks.append(BasicBlock(c, width, stride, norm))
        c = width
    self.layers = nn.Sequential(*blocks)
    self.classifier = nn.Linear(512, num_classes)

  def embed(self, x):
    out = self.layers(F.relu(self.bn1(self.conv1(x))))
    return F.avg_pool2d(out, 4).flatten(1)

  def forward(self, x):
    return self.classifier(self.embed(x))


def build(name, channel, num_classes, im_size):
  """Reference network for one of our model names."""
  convnet = {
    "convnet": {},
    "convnet_bn": {"net_norm": "batchnorm"},
    "convnet_ln": {"net_norm": "layernorm"},
    "convnet_gn": {"net_norm": "groupnorm"},
    "convnet_nn": {"net_norm": "none"},
    "convnet_mp": {"net_pooling": "maxpooling"},
    "convnet_np": {"net_pooling": "none"},
    "convnet_as": {"net_act": "sigmoid"},
    "convnet_al": {"net_act": "leakyrelu"},
    **{f"convnet_d{d}": {"net_depth": d} for d in (1, 2, 3, 4)},
  }
  if name in convnet:
    return ConvNet(channel, num_classes, im_size=im_size, **convnet[name])
  return {
    "mlp": lambda: MLP(channel, num_classes, im_size),
    "lenet": lambda: LeNet(channel, num_classes),
    "alexnet": lambda: AlexNet(channel, num_classes),
    "alexnet_bn": lambda: AlexNet(channel, num_classes, bn=True),
    "vgg11": lambda: VGG11(channel, num_classes),
    "vgg11_bn": lambda: VGG11(channel, num_classes, norm="batchnorm"),
    "resnet18": lambda: ResNet18(channel, num_classes),
    "resnet18_bn": lambda: ResNet18(channel, num_classes, norm="batchnorm"),
  }[name]()


NAMES = (
  "convnet",
  "convnet_bn",
  "convnet_ln",
  "convnet_gn",
  "convnet_nn",
  "convnet_mp",
  "convnet_np",
  "convnet_as",
  "convnet_al",
  "convnet_d1",
  "convnet_d2",
  "convnet_d3",
  "convnet_d4",
  "mlp",
  "lenet",
  "alexnet",
  "alexnet_bn",
  "vgg11",
  "vgg11_bn",
  "resnet18",
  "resnet18_bn",
)
SHAPES = ((28, 28, 1), (32, 32, 3))


def counts():
  """{(name, (h, w, c)): trainable parameter count} with 10 classes."""
  out = {}
  for name in NAMES:
    for h, w, c in SHAPES:
      net = build(name, c, 10, (h, w))
      out[name, (h, w, c)] = sum(p.numel() for p in net.parameters())
  return out


def _torch_leaves(net):
  """(kind, module) in registration order for modules with parameters."""
  kinds = {
    nn.Conv2d: "conv",
    nn.Linear: "dense",
    nn.GroupNorm: "norm",
    nn.BatchNorm2d: "norm",
    nn.LayerNorm: "layer_norm",
  }
  return [(kinds[type(m)], m) for m in net.modules() if type(m) in kinds]


def _flax_layer_paths(model, x):
  """Paths of our layers with parameters, in the order a forward pass calls
  them (Flax sorts variable dicts by name, so their order is no guide)."""
  import flax.linen as fnn

  from lowrank_distill import models

  kinds = (models.Conv, models.Dense, models.GroupNorm, models.LayerNorm)
  kinds += (models.BatchNorm,)
  paths = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, kinds):
      path = tuple(context.module.scope.path)
      if path not in paths:
        paths.append(path)
    return next_fun(*args, **kwargs)

  with fnn.intercept_methods(record):
    model.init(__import__("jax").random.key(0), x)
  return paths


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def to_flax(net, model, variables, x):
  """Copies torch weights into a Flax variables pytree of the same net."""
  import jax

  params = jax.tree.map(np.array, variables["params"])
  stats = jax.tree.map(np.array, variables.get("batch_stats", {}))
  t_leaves = _torch_leaves(net)
  paths = _flax_layer_paths(model, x)
  if len(t_leaves) != len(paths):
    raise ValueError(f"{len(t_leaves)} torch vs {len(paths)} flax layers")
  last_c = x.shape[-1]
  for (kind, m), path in zip(t_leaves, paths, strict=True):
    leaf = _get(params, path)
    if kind == "conv":
      leaf["kernel"] = m.weight.detach().numpy().transpose(2, 3, 1, 0)
      last_c = m.out_channels
    elif kind == "dense":
      w = m.weight.detach().numpy()
      hw = w.shape[1] // last_c
      # Torch flattens (c, h, w); we flatten (h, w, c).
      w = w.reshape(w.shape[0], last_c, hw).transpose(2, 1, 0)
      leaf["kernel"] = w.reshape(hw * last_c, w.shape[-1])
      last_c = m.out_features
    elif kind == "layer_norm":
      leaf["scale"] = m.weight.detach().numpy().transpose(1, 2, 0)
      leaf["bias"] = m.bias.detach().numpy().transpose(1, 2, 0)
      continue
    else:
      leaf["scale"] = m.weight.detach().numpy()
    if "bias" in leaf:
      leaf["bias"] = m.bias.detach().numpy()
    if isinstance(m, nn.BatchNorm2d):
      node = _get(stats, path)
      node["mean"] = m.running_mean.numpy().copy()
      node["var"] = m.running_var.numpy().copy()
  out = {"params": params}
  if stats:
    out["batch_stats"] = stats
  return out


def from_flax(net, model, variables, x):
  """Copies a Flax variables pytree into the torch net (inverse of `to_flax`).

  Writes the torch parameters (and BatchNorm running statistics) in place,
  so both sides compute the same function; returns `net`.
  """
  import jax

  params = jax.tree.map(np.asarray, variables["params"])
  stats = jax.tree.map(np.asarray, variables.get("batch_stats", {}))
  t_leaves = _torch_leaves(net)
  paths = _flax_layer_paths(model, x)
  if len(t_leaves) != len(paths):
    raise ValueError(f"{len(t_leaves)} torch vs {len(paths)} flax layers")

  def put(tensor, array):
    tensor.copy_(torch.from_numpy(np.array(array)))

  last_c = x.shape[-1]
  with torch.no_grad():
    for (kind, m), path in zip(t_leaves, paths, strict=True):
      leaf = _get(params, path)
      if kind == "conv":
        put(m.weight, leaf["kernel"].transpose(3, 2, 0, 1))
        last_c = m.out_channels
      elif kind == "dense":
        k = leaf["kernel"]
        hw = k.shape[0] // last_c
        # Ours flattens (h, w, c); torch flattens (c, h, w).
        w = k.reshape(hw, last_c, k.shape[1]).transpose(2, 1, 0)
        put(m.weight, w.reshape(k.shape[1], last_c * hw))
        last_c = m.out_features
      elif kind == "layer_norm":
        put(m.weight, leaf["scale"].transpose(2, 0, 1))
        put(m.bias, leaf["bias"].transpose(2, 0, 1))
        continue
      else:
        put(m.weight, leaf["scale"])
      if "bias" in leaf:
        put(m.bias, leaf["bias"])
      if isinstance(m, nn.BatchNorm2d):
        node = _get(stats, path)
        put(m.running_mean, node["mean"])
        put(m.running_var, node["var"])
  return net


def check(names=NAMES, shapes=SHAPES, impl="xla"):
  """Max abs differences between torch and Flax (eval, train, embed, BN)."""
  import jax

  from lowrank_distill import models

  rng = np.random.default_rng(0)
  torch.manual_seed(0)
  for name in names:
    for h, w, c in shapes:
      net = build(name, c, 10, (h, w))
      model = models.create(
        name, num_classes=10, image_shape=(h, w, c), conv_impl=impl
      )
      x = rng.normal(size=(4, h, w, c)).astype(np.float32)
      variables = model.init(jax.random.key(0), x[:1])
      shapes_before = jax.tree.map(np.shape, variables)
      variables = to_flax(net, model, variables, x[:1])
      if jax.tree.map(np.shape, variables) != shapes_before:
        raise ValueError(f"{name}: shape mismatch after weight transfer")
      xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      errs = {}
      net.train()
      with torch.no_grad():
        t_train = net(xt).numpy()
      if models.uses_batch_norm(model):
        f_train, upd = model.apply(
          variables, x, train=True, mutable=["batch_stats"]
        )
        t_bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        f_bn = [
          _get(upd["batch_stats"], p)
          for p in _flax_layer_paths(model, x[:1])
          if _has(upd["batch_stats"], p)
        ]
        errs["bn_var"] = max(
          float(np.abs(np.asarray(f["var"]) - t.running_var.numpy()).max())
          for f, t in zip(f_bn, t_bn, strict=True)
        )
        errs["bn_mean"] = max(
          float(np.abs(np.asarray(f["mean"]) - t.running_mean.numpy()).max())
          for f, t in zip(f_bn, t_bn, strict=True)
        )
        variables = {**variables, **upd}
      else:
        f_train = model.apply(variables, x, train=True)
      errs["train"] = float(np.abs(np.asarray(f_train) - t_train).max())
      net.eval()
      with torch.no_grad():
        t_eval = net(xt).numpy()
        t_embed = net.embed(xt).numpy()
      f_eval = np.asarray(model.apply(variables, x))
      f_embed = np.asarray(model.apply(variables, x, method="embed"))
      errs["eval"] = float(np.abs(f_eval - t_eval).max())
      errs["embed_norm"] = float(
        abs(np.linalg.norm(f_embed) - np.linalg.norm(t_embed))
        / np.linalg.norm(t_embed)
      )
      scale = float(np.abs(t_eval).max())
      print(
        f"{name:12s} {h}x{w}x{c} |logits|max {scale:.3g} "
        + " ".join(f"{k} {v:.2e}" for k, v in errs.items())
      )


def _has(tree, path):
  for k in path:
    if k not in tree:
      return False
    tree = tree[k]
  return True


def main(argv):
  what = argv[1] if len(argv) > 1 else "counts"
  if what == "counts":
    for (name, shape), n in counts().items():
      print(f"{name:12s} {'x'.join(map(str, shape)):8s} {n}")
  elif what == "check":
    impl = argv[2] if len(argv) > 2 else "xla"
    names = argv[3].split(",") if len(argv) > 3 else NAMES
    check(names, impl=impl)
  else:
    raise SystemExit(
      f"usage: {argv[0]} counts|check [xla|im2col [name,name,...]]"
    )


if __name__ == "__main__":
  main(sys.argv)
