"""Pictures of synthetic sets and the plots that analyse them.

Image grids (de-standardised), low-rank components, singular-value spectra,
feature-space projections (PCA, t-SNE) and accuracy-versus-storage curves.

Every `save_*` function is pure (arrays in, one PNG out), creates the
parent folders and returns the path it wrote. Image grids are written with
PIL pixel for pixel (their size is given by `grid_size`); plots are drawn
with matplotlib's Agg canvas on a `Figure` of its own (pyplot's global
state and the display backend are never touched) and are exactly
`size = (width, height)` pixels: `figsize = size / dpi` at that `dpi`.
"""

import collections
import functools
import pathlib
from collections.abc import Iterable, Mapping

import jax
import numpy as np
from PIL import Image

from lowrank_distill import checks

# Default plot size in pixels (width, height) and resolution.
PLOT_SIZE = (640, 480)
DPI = 100


# ---------------------------------------------------------------------------
# Image grids.


def image_grid(images, *, nrow: int, pad: int = 1, scale: int = 1):
  """Tiles images into one picture, `nrow` images per row.

  Args:
    images: [n, h, w, c] in [0, 1] (values outside are clipped); c is 1 or 3.
    nrow: images per row.
    pad: pixels of white between images.
    scale: nearest-neighbour upscaling factor (tiny images stay visible).

  Returns:
    uint8 [rows * (h + pad) + pad, nrow * (w + pad) + pad, c].
  """
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = images.shape
  nrow = max(1, min(nrow, n))
  rows = -(-n // nrow)
  grid = np.ones(
    (rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32
  )
  for i, image in enumerate(images):
    r, col = divmod(i, nrow)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top : top + h, left : left + w] = image
  return (grid * 255 + 0.5).astype(np.uint8)


def save_png(path, picture) -> pathlib.Path:
  """Writes a uint8 [H, W, 1|3] array as PNG, creating parent folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if picture.shape[-1] == 1:
    picture = picture[..., 0]
  Image.fromarray(picture).save(path)
  return path


def _auto_scale(size: int) -> int:
  return max(1, 64 // size)


def grid_size(num_images: int, image_shape, *, nrow: int) -> tuple[int, int]:
  """(width, height) in pixels of the PNG `save_image_grid` writes.

  Images of `h x w` are upscaled by `s = max(1, 64 // h)` and tiled with a
  one-pixel border: `(cols * (w * s + 1) + 1, rows * (h * s + 1) + 1)` with
  `cols = min(nrow, n)` and `rows = ceil(n / cols)`.
  """
  h, w = int(image_shape[0]), int(image_shape[1])
  s = _auto_scale(h)
  cols = max(1, min(nrow, num_images))
  rows = -(-num_images // cols)
  return cols * (w * s + 1) + 1, rows * (h * s + 1) + 1


def to_unit_images(images, dataset) -> np.ndarray:
  """Images in the dataset's preprocessed space back to displayable [0, 1].

  Args:
    images: [n, h, w, c] standardised (and maybe ZCA-whitened) images.
    dataset: the `lowrank_distill.data.Dataset` they live in; its
      `to_unit_range` undoes ZCA, then standardisation.

  Returns:
    float32 [n, h, w, c] clipped to [0, 1].
  """
  unit = dataset.to_unit_range(np.asarray(images, np.float32))
  return np.clip(np.asarray(unit, np.float32), 0.0, 1.0)


def label_grid(
  picture,
  *,
  cell: tuple[int, int],
  nrow: int,
  pad: int = 1,
  row_names=None,
  captions=None,
):
  """An `image_grid` picture with a name left of each row and a caption
  under each image, as an RGB uint8 array.

  Args:
    picture: uint8 [H, W, 1|3] from `image_grid`.
    cell: (h, w) of one (upscaled) image in it.
    nrow: images per row, as given to `image_grid`.
    pad: its padding.
    row_names: one text per row (e.g. the class of a class-major set).
    captions: one text per image (e.g. a soft label's top class).
  """
  from PIL import ImageDraw, ImageFont

  font = ImageFont.load_default()
  h, w = cell
  rows = (picture.shape[0] - pad) // (h + pad)
  cols = (picture.shape[1] - pad) // (w + pad)
  line = 12
  left = 6 + max((7 * len(str(n)) for n in row_names or []), default=0)
  below = line if captions else 0
  canvas = Image.new(
    "RGB",
    (left + picture.shape[1], picture.shape[0] + rows * below),
    "white",
  )
  source = Image.fromarray(
    picture[..., 0] if picture.shape[-1] == 1 else picture
  ).convert("RGB")
  draw = ImageDraw.Draw(canvas)
  for r in range(rows):
    # Each row of images, then its captions.
    top = pad + r * (h + pad)
    band = source.crop((0, top, source.width, top + h + pad))
    y = top + r * below
    canvas.paste(band, (left, y))
    if row_names is not None and r < len(row_names):
      draw.text((2, y + h // 2 - line // 2), str(row_names[r]), "black", font)
    for col in range(cols if captions else 0):
      i = r * nrow + col
      if i < len(captions):
        x = left + pad + col * (w + pad)
        draw.text((x, y + h + pad), str(captions[i]), "black", font)
  return np.asarray(canvas)


def save_image_grid(
  path, images, *, nrow: int, dataset=None, row_names=None, captions=None
) -> pathlib.Path:
  """Saves [n, h, w, c] images as a grid PNG (`grid_size` pixels when not
  labelled).

  Args:
    path: the PNG to write.
    images: [n, h, w, c]; in [0, 1] (clipped) when `dataset` is None, else
      in `dataset`'s preprocessed space (see `to_unit_images`).
    nrow: images per row (e.g. images per class: one class per row).
    dataset: the `Dataset` to de-standardise with, or None.
    row_names: a text left of each row (`label_grid`), or None.
    captions: a text under each image, or None.
  """
  images = np.asarray(images)
  if dataset is not None:
    images = to_unit_images(images, dataset)
  scale = _auto_scale(images.shape[1])
  picture = image_grid(images, nrow=nrow, scale=scale)
  if row_names is not None or captions is not None:
    picture = label_grid(
      picture,
      cell=(images.shape[1] * scale, images.shape[2] * scale),
      nrow=max(1, min(nrow, images.shape[0])),
      row_names=row_names,
      captions=captions,
    )
  return save_png(path, picture)


def soft_label_captions(logits, class_names) -> list[str]:
  """'<top class> <its probability>' for each row of [n, C] label logits."""
  logits = np.asarray(logits, np.float64)
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  top = probs.argmax(axis=1)
  return [f"{class_names[k]} {probs[i, k]:.2f}" for i, k in enumerate(top)]


# ---------------------------------------------------------------------------
# Low-rank components.


def _normalise(x):
  """Maps each item of [m, ...] to [0, 1] by its own min and max."""
  axes = tuple(range(1, x.ndim))
  lo = x.min(axis=axes, keepdims=True)
  hi = x.max(axis=axes, keepdims=True)
  return (x - lo) / np.maximum(hi - lo, 1e-12)


def rank_one_components(param: str, params: dict, *, max_images: int = 10):
  """The rank-one pictures a low-rank synthetic set is built from.

  factors: for each of the first `max_images` images, its r components
  `a[:, k] b[k, :]` (channel-wise), [max_images * r, h, w, c].
  mappers: for each set, the r*r basis images `u[:, i] v[j, :]` that its codes
  mix, [k * r * r, h, w, c].
  memories / lowrank_memories: the K bases the addresses mix, [K, h, w, c]
  (one row). hallucinators / lowrank_hallucinators: the bases, [C * m, h,
  w, c] (rows of 10).

  Returns:
    (components [m, h, w, c] each normalised to [0, 1], items per row).
  """
  if param == "factors":
    a, b = params["a"][:max_images], params["b"][:max_images]
    comps = np.einsum("nchk,nckw->nkhwc", a, b)
    return _normalise(comps.reshape(-1, *comps.shape[2:])), a.shape[-1]
  if param == "mappers":
    u, v = params["u"], params["v"]
    comps = np.einsum("schi,scjw->sijhwc", u, v)
    r = u.shape[-1]
    return _normalise(comps.reshape(-1, *comps.shape[3:])), r * r
  if param == "memories":
    bases = np.asarray(params["bases"])
    return _normalise(bases), bases.shape[0]
  if param == "lowrank_memories":
    bases = np.einsum("kchr,kcrw->khwc", params["a"], params["b"])
    return _normalise(bases), bases.shape[0]
  if param == "hallucinators":
    bases = np.asarray(params["bases"]["images"])
    return _normalise(bases), min(bases.shape[0], 10)
  if param == "lowrank_hallucinators":
    factors = params["bases"]
    bases = np.einsum("nchr,ncrw->nhwc", factors["a"], factors["b"])
    return _normalise(bases), min(bases.shape[0], 10)
  raise ValueError(
    f"param {param!r} has no components to draw; valid: factors, mappers, "
    f"memories, lowrank_memories, hallucinators, lowrank_hallucinators"
  )


def save_addresses(
  path, addresses, *, images_per_class: int, cell: int = 8
) -> pathlib.Path:
  """Saves memories' addresses as a heat map PNG: one row per image, one
  column per basis, mid grey 0, white the largest |coefficient|
  positive, black the largest negative; a white line between classes.

  Args:
    path: the PNG to write.
    addresses: [n, K] (class-major images).
    images_per_class: rows per class.
    cell: pixels per coefficient.

  Returns:
    The path; the picture is `(K * cell, n * cell + classes - 1)` pixels.
  """
  a = np.asarray(addresses, np.float64)
  scale = max(float(np.abs(a).max()), 1e-12)
  shades = 0.5 + 0.5 * a / scale
  rows = []
  for start in range(0, a.shape[0], images_per_class):
    if rows:
      rows.append(np.ones((1, a.shape[1] * cell)))
    block = shades[start : start + images_per_class]
    rows.append(block.repeat(cell, axis=0).repeat(cell, axis=1))
  picture = np.concatenate(rows)[..., None]
  return save_png(path, (picture * 255 + 0.5).astype(np.uint8))


def save_components(path, param: str, params: dict) -> pathlib.Path:
  """Saves the components a set is built from as a grid PNG.

  One row per image (factors: its r components), per mapper set (mappers:
  its r*r basis images) or of the memories' bases; the size is
  `grid_size(m, (h, w), nrow=items per row)` for the m components of
  `rank_one_components`.
  """
  comps, nrow = rank_one_components(param, params)
  return save_png(
    path, image_grid(comps, nrow=nrow, scale=_auto_scale(comps.shape[1]))
  )


# ---------------------------------------------------------------------------
# Matplotlib plumbing.


def _figure(size, dpi: int, *, ncols: int = 1):
  """A pyplot-free Figure of exactly `size` pixels and its axes."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  width, height = (int(s) for s in size)
  if width < 1 or height < 1 or dpi < 1:
    raise ValueError(f"size {size} and dpi {dpi} must be positive")
  fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, ncols, squeeze=False)[0]
  return fig, list(axes)


def _save_figure(fig, path, dpi: int) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path


# ---------------------------------------------------------------------------
# Singular-value spectra.


def singular_values(images) -> np.ndarray:
  """Singular values of every channel of every image.

  Args:
    images: [n, h, w, c].

  Returns:
    float64 [n, c, min(h, w)], each row in decreasing order.
  """
  x = np.asarray(images, np.float64)
  if x.ndim != 4:
    raise ValueError(f"images must be [n, h, w, c], got shape {x.shape}")
  return np.linalg.svd(np.transpose(x, (0, 3, 1, 2)), compute_uv=False)


def label_statistics(logits, *, images_per_class: int) -> dict[str, float]:
  """How far learned soft labels are from the classes they started with.

  Args:
    logits: [n, C] label logits of a class-major set (image `i` belongs to
      class `i // images_per_class`).
    images_per_class: k, with n = C * k.

  Returns:
    {'entropy': mean entropy of `softmax(logits)` in nats (log C is
    uniform), 'own_class_prob': mean probability of each image's class,
    'argmax_accuracy': fraction of images whose most likely label is their
    class}.
  """
  x = np.asarray(logits, np.float64)
  if x.ndim != 2 or x.shape[0] % images_per_class:
    raise ValueError(
      f"logits must be [C * images_per_class, C], got {x.shape} with "
      f"images_per_class={images_per_class}"
    )
  x = x - x.max(axis=-1, keepdims=True)
  probs = np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)
  own = np.arange(x.shape[0]) // images_per_class
  entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=-1)
  return {
    "entropy": float(entropy.mean()),
    "own_class_prob": float(probs[np.arange(len(own)), own].mean()),
    "argmax_accuracy": float(np.mean(probs.argmax(axis=-1) == own)),
  }


def mapper_spectra(params: dict) -> dict[str, np.ndarray]:
  """Singular values of shared mappers (orthonormal ones give all ones).

  Args:
    params: {'u': [k, c, h, r], 'v': [k, c, r, w], ...} (`mappers`).

  Returns:
    {'u': [k, c, r], 'v': [k, c, r]} float64, each row decreasing.
  """
  return {
    name: np.linalg.svd(np.asarray(params[name], np.float64), compute_uv=False)
    for name in ("u", "v")
  }


def set_statistics(trainable: dict, *, images_per_class: int) -> dict:
  """What a run logs about its set besides the loss: soft labels'
  `label_statistics` under 'labels', a learned lr under 'lr', shared
  mappers' largest and smallest singular values under 'mappers'. Empty for
  a set of fixed-label images or factors."""
  stats = {}
  if "labels" in trainable:
    stats["labels"] = label_statistics(
      trainable["labels"], images_per_class=images_per_class
    )
  if "log_lr" in trainable:
    stats["lr"] = float(np.exp(np.asarray(trainable["log_lr"], np.float64)))
  images = trainable.get("images")
  if isinstance(images, Mapping) and {"u", "v"} <= set(images):
    spectra = mapper_spectra(images)
    stats["mappers"] = {
      f"{name}_{end}": float(pick(values))
      for name, values in spectra.items()
      for end, pick in (("max_sv", np.max), ("min_sv", np.min))
    }
  return stats


def energy_spectrum(spectra) -> np.ndarray:
  """Mean share of energy per singular value, per channel.

  Args:
    spectra: [n, c, k] singular values (see `singular_values`).

  Returns:
    [c, k]: the mean over images of `s_i**2 / sum_j s_j**2` (each image's
    spectrum sums to 1; an all-zero channel counts as zero everywhere).
  """
  s2 = np.square(np.asarray(spectra, np.float64))
  total = s2.sum(axis=-1, keepdims=True)
  share = np.divide(s2, total, out=np.zeros_like(s2), where=total > 0)
  return share.mean(axis=0)


def save_spectra(
  path,
  spectra_by_name: Mapping[str, np.ndarray],
  *,
  size=PLOT_SIZE,
  dpi: int = DPI,
  log_y: bool = False,
  title: str | None = None,
) -> pathlib.Path:
  """Plots the mean normalised singular-value spectrum of several sets.

  One panel per channel, one line per set: `energy_spectrum` against the
  index of the singular value. Real images concentrate their energy in the
  first few; a rank-r set has none beyond r.

  Args:
    path: the PNG to write, exactly `size` pixels.
    spectra_by_name: set name -> [n_i, c, k_i] singular values; the sets
      must agree on c.
    size: (width, height) in pixels, shared by the panels.
    dpi: resolution; `figsize = size / dpi`.
    log_y: a logarithmic energy axis (zero shares are not drawn).
    title: figure title.

  References:
    Yang et al., "An Efficient Dataset Condensation Plugin and Its
    Application to Continual Learning", NeurIPS 2023 (the low-rank
    argument).
  """
  energies = {name: energy_spectrum(s) for name, s in spectra_by_name.items()}
  channels = {e.shape[0] for e in energies.values()}
  if len(channels) != 1:
    raise ValueError(f"sets disagree on the channel count: {sorted(channels)}")
  (c,) = channels
  fig, axes = _figure(size, dpi, ncols=c)
  for ch, ax in enumerate(axes):
    for name, energy in energies.items():
      index = np.arange(1, energy.shape[1] + 1)
      ax.plot(index, energy[ch], marker="o", markersize=3, label=name)
    if log_y:
      ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    if c > 1:
      ax.set_title(f"channel {ch}")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("share of energy")
  axes[0].legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save_figure(fig, path, dpi)


# ---------------------------------------------------------------------------
# Feature space.


@functools.partial(jax.jit, static_argnames="model")
def _embed(model, variables, x):
  return model.apply(variables, x, method="embed")


def embed_images(model, variables, images, *, batch_size: int = 256):
  """Features of images before a model's classifier, in batches.

  Every batch is padded to `batch_size`, so one compiled program serves all
  batches and all calls with the same model and image shape.

  Args:
    model: a `lowrank_distill.models` module with an `embed` method.
    variables: its Flax variables.
    images: [n, h, w, c], n >= 1.
    batch_size: images per forward pass.

  Returns:
    float32 numpy [n, d].
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if n < 1 or batch_size < 1:
    raise ValueError(
      f"need n >= 1 images and batch_size >= 1, got {n}, {batch_size}"
    )
  out = []
  for start in range(0, n, batch_size):
    batch = images[start : start + batch_size]
    size = batch.shape[0]
    if size < batch_size:
      pad = np.zeros((batch_size - size, *batch.shape[1:]), np.float32)
      batch = np.concatenate([batch, pad])
    out.append(np.asarray(_embed(model, variables, batch))[:size])
  return np.concatenate(out).reshape(n, -1)


def pca(features, *, num_components: int = 2, fit=None) -> np.ndarray:
  """Principal-component coordinates.

  Args:
    features: [n, d].
    num_components: k <= d.
    fit: [m, d] the data the axes are fitted on (default: `features`).

  Returns:
    [n, k]: `(features - mean) @ V_k` with `mean` and the top-k right
    singular vectors `V_k` of the centred `fit`; each axis's sign makes its
    largest-magnitude loading positive, so the result is deterministic.
  """
  x = np.asarray(features, np.float64)
  fit = x if fit is None else np.asarray(fit, np.float64)
  if not 1 <= num_components <= x.shape[1]:
    raise ValueError(
      f"num_components must be in [1, {x.shape[1]}], got {num_components}"
    )
  mean = fit.mean(axis=0)
  _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
  axes = vt[:num_components]
  rows = np.arange(num_components)
  signs = np.sign(axes[rows, np.argmax(np.abs(axes), axis=1)])
  return (x - mean) @ (axes * signs[:, None]).T


def _tsne(x, *, seed: int, perplexity: float, max_iter: int):
  from sklearn.manifold import TSNE

  perplexity = min(perplexity, max(1.0, (x.shape[0] - 1) / 3))
  return TSNE(
    n_components=2,
    perplexity=perplexity,
    init="pca",
    max_iter=max_iter,
    random_state=seed,
  ).fit_transform(x)


PROJECTIONS = ("pca", "tsne")


def project_features(
  features_by_name: Mapping[str, np.ndarray],
  *,
  method: str = "pca",
  seed: int = 0,
  perplexity: float = 30.0,
  max_iter: int = 1000,
  fit_on: str | None = None,
) -> dict[str, np.ndarray]:
  """Projects several feature sets into one shared 2-D space.

  The sets are projected jointly (one PCA basis, one t-SNE embedding), so
  real and synthetic points are comparable.

  Args:
    features_by_name: set name -> [n_i, d] features (or [n_i, ...], which
      is flattened).
    method: 'pca' (numpy SVD) or 'tsne' (`sklearn.manifold.TSNE`, PCA
      init; perplexity capped at `(N - 1) / 3` for N points in all).
    seed: the t-SNE random state.
    perplexity: the t-SNE perplexity.
    max_iter: t-SNE optimisation steps (sklearn needs at least 250).
    fit_on: for 'pca', fit the axes on this set only (e.g. the real one);
      None fits on all of them.

  Returns:
    set name -> [n_i, 2].
  """
  checks.check_choice("projection", method, PROJECTIONS)
  names = list(features_by_name)
  arrays = [
    np.asarray(features_by_name[k], np.float64).reshape(
      len(features_by_name[k]), -1
    )
    for k in names
  ]
  if fit_on is not None and fit_on not in features_by_name:
    raise ValueError(f"fit_on {fit_on!r} is not a set; valid: {names}")
  joint = np.concatenate(arrays)
  if method == "pca":
    fit = None if fit_on is None else arrays[names.index(fit_on)]
    points = pca(joint, num_components=2, fit=fit)
  else:
    points = _tsne(joint, seed=seed, perplexity=perplexity, max_iter=max_iter)
  splits = np.cumsum([len(a) for a in arrays])[:-1]
  return dict(zip(names, np.split(points, splits)))


_MARKERS = ("o", "X", "^", "s", "P", "D", "v", "*")


def _class_ids(labels) -> np.ndarray:
  """[n] int classes from [n] ints or [n, C] logits (their argmax)."""
  labels = np.asarray(labels)
  return labels.argmax(axis=-1) if labels.ndim == 2 else labels.astype(int)


def save_feature_plot(
  path,
  projections: Mapping[str, np.ndarray],
  labels_by_name: Mapping[str, np.ndarray] | None = None,
  *,
  size=PLOT_SIZE,
  dpi: int = DPI,
  title: str | None = None,
) -> pathlib.Path:
  """Scatter plot of projected real and synthetic sets.

  Colour is the class (one colour map for all sets), marker the set: the
  first set (usually the real one) as small faint dots, the others as large
  outlined markers.

  Args:
    path: the PNG to write, exactly `size` pixels.
    projections: set name -> [n_i, 2] (see `project_features`).
    labels_by_name: set name -> [n_i] int classes, or [n_i, C] label logits
      (their argmax); a set without labels is drawn in one colour.
    size: (width, height) in pixels.
    dpi: resolution.
    title: axes title.
  """
  from matplotlib.lines import Line2D

  classes = {
    name: _class_ids(labels) for name, labels in (labels_by_name or {}).items()
  }
  num_classes = 1 + max([int(c.max()) for c in classes.values()] or [0])
  cmap = "tab10" if num_classes <= 10 else "tab20"
  cmap = cmap if num_classes <= 20 else "turbo"
  fig, (ax,) = _figure(size, dpi)
  handles = []
  for i, (name, points) in enumerate(projections.items()):
    points = np.asarray(points)
    marker = _MARKERS[i % len(_MARKERS)]
    size_pt, alpha, edge = (8, 0.35, "none") if i == 0 else (70, 1.0, "black")
    if name in classes:
      colour = dict(c=classes[name], cmap=cmap, vmin=0, vmax=num_classes - 1)
      face = "0.5"
    else:
      colour = dict(color=f"C{i % 10}")
      face = f"C{i % 10}"
    ax.scatter(
      points[:, 0],
      points[:, 1],
      s=size_pt,
      marker=marker,
      alpha=alpha,
      edgecolors=edge,
      linewidths=0 if i == 0 else 0.8,
      **colour,
    )
    handles.append(
      Line2D(
        [],
        [],
        linestyle="",
        marker=marker,
        markersize=4 if i == 0 else 8,
        markerfacecolor=face,
        markeredgecolor="none" if i == 0 else "black",
        label=name,
      )
    )
  ax.legend(handles=handles)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save_figure(fig, path, dpi)


# ---------------------------------------------------------------------------
# Accuracy versus storage.

X_LABELS = {
  "storage_floats": "storage (floats)",
  "ipc": "storage (images per class)",
}


def point_from_summary(summary: Mapping, *, label: str, model="convnet"):
  """An accuracy point from a `distill.run` summary (or `results.json`).

  Returns:
    {'label', 'storage_floats', 'ipc', 'mean', 'std'}, ipc being the budget
    in full-size images per class.
  """
  result = summary["results"][model]
  return {
    "label": label,
    "storage_floats": int(summary["storage_floats"]),
    "ipc": int(summary["budget"]["ipc"]),
    "mean": float(result["mean"]),
    "std": float(result["std"]),
  }


def is_log_x(values) -> bool:
  """Whether `save_accuracy_vs_storage` draws these storages on a log axis."""
  values = [float(v) for v in values]
  return min(values) > 0 and max(values) > 10 * min(values)


def save_accuracy_vs_storage(
  path,
  points: Iterable[Mapping],
  *,
  x: str = "storage_floats",
  size=PLOT_SIZE,
  dpi: int = DPI,
  title: str | None = None,
) -> pathlib.Path:
  """Accuracy against storage, one line with error bars per method.

  The x axis is logarithmic when the storage spans more than 10x.

  Args:
    path: the PNG to write, exactly `size` pixels.
    points: records with 'label' (or 'method'), the storage under key `x`,
      'mean' and optionally 'std' (0 when absent).
    x: the storage key: 'storage_floats', 'ipc' or any numeric key.
    size: (width, height) in pixels.
    dpi: resolution.
    title: axes title.
  """
  lines = collections.defaultdict(list)
  for p in points:
    name = p.get("label", p.get("method"))
    if name is None:
      raise ValueError(f"point {dict(p)} has neither 'label' nor 'method'")
    lines[name].append(
      (float(p[x]), float(p["mean"]), float(p.get("std", 0.0)))
    )
  if not lines:
    raise ValueError("no points to plot")
  xs = [v for line in lines.values() for v, _, _ in line]
  fig, (ax,) = _figure(size, dpi)
  for i, (name, line) in enumerate(lines.items()):
    xv, mean, std = np.asarray(sorted(line)).T
    ax.errorbar(
      xv, mean, yerr=std, marker="o", capsize=3, label=name, color=f"C{i}"
    )
  if is_log_x(xs):
    ax.set_xscale("log")
  ax.set_xlabel(X_LABELS.get(x, x))
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return _save_figure(fig, path, dpi)


def save_accuracy_plot(path, methods: dict, *, title: str = "") -> None:
  """Accuracy (%) vs classes seen, one line with error bars per method.

  Args:
    path: the PNG to write.
    methods: method -> {'classes_seen' [T], 'mean' [T], 'std' [T]} with
      accuracies in [0, 1] (`summarize`'s output).
    title: the figure's title.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, m in methods.items():
    axes.errorbar(
      m["classes_seen"],
      100 * np.asarray(m["mean"]),
      yerr=100 * np.asarray(m["std"]),
      marker="o",
      capsize=3,
      label=name,
    )
  axes.set_xlabel("classes seen")
  axes.set_ylabel("test accuracy on seen classes (%)")
  axes.set_xticks(next(iter(methods.values()))["classes_seen"])
  axes.grid(alpha=0.3)
  axes.legend()
  axes.set_title(title, fontsize=9)
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path)


def _series(records, keep) -> dict[str, tuple[list, list]]:
  """name -> (steps, values) of the numbers in `records` that `keep`s."""
  out: dict[str, tuple[list, list]] = {}

  def walk(step, tree, prefix):
    for name, value in tree.items():
      if isinstance(value, Mapping):
        walk(step, value, f"{prefix}{name}/")
      elif isinstance(value, int | float) and not isinstance(value, bool):
        full = f"{prefix}{name}"
        if keep(full):
          steps, values = out.setdefault(full, ([], []))
          steps.append(step)
          values.append(float(value))

  for record in records:
    walk(record["step"], {k: v for k, v in record.items()}, "")
  return out


def save_metrics_plot(path, records) -> pathlib.Path | None:
  """A run's losses and accuracies against its steps, as one PNG.

  Args:
    path: the PNG to write.
    records: `metrics.jsonl`'s records (`workdir.MetricsWriter.read`).

  Returns:
    The path, or None when the records hold no loss and no accuracy.
  """
  panels = {
    "loss": _series(records, lambda n: n.split("/")[-1].endswith("loss")),
    "accuracy (%)": _series(
      records, lambda n: n.endswith("/mean") or n.endswith("accuracy")
    ),
  }
  panels = {name: series for name, series in panels.items() if series}
  if not panels:
    return None
  fig, axes = _figure((560 * len(panels), 420), 100, ncols=len(panels))
  for ax, (name, series) in zip(axes, panels.items(), strict=True):
    scale = 100.0 if name.startswith("accuracy") else 1.0
    for label, (steps, values) in series.items():
      ax.plot(
        steps,
        scale * np.asarray(values),
        marker="o" if len(steps) < 30 else None,
        label=label,
      )
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    if name == "loss" and all(v > 0 for _, vs in series.values() for v in vs):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _save_figure(fig, path, 100)


def save_runs_plot(path, runs: dict) -> pathlib.Path | None:
  """Several runs side by side: loss, soft labels' entropy, mapper spectra.

  Args:
    path: the PNG to write.
    runs: name -> {'records': `metrics.jsonl`'s records, 'spectra':
      `mapper_spectra` of the final set or None}.

  Returns:
    The path; None when no run logged a loss. Panels: the logged loss
    against the step (every run); the soft labels' mean entropy (nats)
    against the step (runs with soft labels); the final mappers' singular
    values, mean over sets and channels, by index (runs with mappers, U
    solid, V dashed).
  """
  losses = {
    name: _series(run["records"], lambda n: n == "loss").get("loss")
    for name, run in runs.items()
  }
  losses = {name: series for name, series in losses.items() if series}
  if not losses:
    return None
  entropies = {
    name: series
    for name, run in runs.items()
    if (series := _series(run["records"], lambda n: n == "labels/entropy"))
  }
  spectra = {
    name: run["spectra"] for name, run in runs.items() if run.get("spectra")
  }
  from matplotlib import colormaps

  # One colour per run in every panel (tab20: up to 20 distinct).
  palette = colormaps["tab20" if len(runs) > 10 else "tab10"]
  colour = {name: palette(i % palette.N) for i, name in enumerate(runs)}
  ncols = 1 + bool(entropies) + bool(spectra)
  fig, axes = _figure((520 * ncols, 420), 100, ncols=ncols)

  def labelled(ax, xlabel, ylabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

  axes = iter(axes)
  ax = next(axes)
  for name, (steps, values) in losses.items():
    ax.plot(steps, values, color=colour[name], label=name)
  labelled(ax, "iteration", "loss")
  if entropies:
    ax = next(axes)
    for name, series in entropies.items():
      steps, values = series["labels/entropy"]
      ax.plot(steps, values, color=colour[name], label=name)
    labelled(ax, "iteration", "soft labels' entropy (nats)")
  if spectra:
    ax = next(axes)
    for name, values in spectra.items():
      for mapper, style in (("u", "-"), ("v", "--")):
        mean = np.asarray(values[mapper], np.float64).reshape(
          -1, np.shape(values[mapper])[-1]
        )
        ax.plot(
          np.arange(1, mean.shape[-1] + 1),
          mean.mean(axis=0),
          style,
          color=colour[name],
          label=f"{name} {mapper.upper()}",
        )
    labelled(ax, "singular value index", "mappers' singular values (1 at init)")
  fig.tight_layout()
  return _save_figure(fig, path, 100)
