"""Known datasets: shapes, normalisation constants, tfds names, class names."""

import dataclasses

SOURCES = ("digits", "tfds", "idx", "npz")

_DIGIT_NAMES = tuple(str(i) for i in range(10))

_CIFAR10_NAMES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)

# The fine labels, in the label order of the archive's fine_label_names.txt.
_CIFAR100_NAMES = tuple(
  """
  apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
  bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee
  clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
  flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
  leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom
  oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
  plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal
  shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
  sweet_pepper table tank telephone television tiger tractor train trout tulip
  turtle wardrobe whale willow_tree wolf woman worm
  """.split()
)

_FASHION_NAMES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)

_MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is known about a dataset before reading it.

  Attributes:
    num_classes: number of classes.
    image_shape: `(h, w, c)`.
    mean: per-channel mean of the [0, 1] training images.
    std: per-channel standard deviation of the [0, 1] training images.
    tfds_name: the tensorflow-datasets builder, or None when tfds lacks it.
    manual_files: the original archives the tfds builder expects in a
      `manual_dir` to prepare without network.
    class_names: one name per class, in label order.
    default_source: the source used when `load` is not given one.
  """

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  tfds_name: str | None
  manual_files: tuple[str, ...]
  class_names: tuple[str, ...]
  default_source: str = "tfds"


DATASETS: dict[str, DatasetSpec] = {
  # Computed once from the train split of `digits.load_digits_split`
  # (population std); tests/data_digits_test.py recomputes them.
  "digits": DatasetSpec(
    num_classes=10,
    image_shape=(8, 8, 1),
    mean=(0.3053435218184979,),
    std=(0.3755026223065707,),
    tfds_name=None,
    manual_files=(),
    class_names=_DIGIT_NAMES,
    default_source="digits",
  ),
  "mnist": DatasetSpec(
    num_classes=10,
    image_shape=(28, 28, 1),
    mean=(0.1307,),
    std=(0.3081,),
    tfds_name="mnist",
    manual_files=_MNIST_FILES,
    class_names=_DIGIT_NAMES,
  ),
  "fashion_mnist": DatasetSpec(
    num_classes=10,
    image_shape=(28, 28, 1),
    mean=(0.2861,),
    std=(0.3530,),
    tfds_name="fashion_mnist",
    manual_files=_MNIST_FILES,
    class_names=_FASHION_NAMES,
  ),
  "cifar10": DatasetSpec(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    tfds_name="cifar10",
    manual_files=("cifar-10-binary.tar.gz",),
    class_names=_CIFAR10_NAMES,
  ),
  "cifar100": DatasetSpec(
    num_classes=100,
    image_shape=(32, 32, 3),
    mean=(0.5071, 0.4866, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    tfds_name="cifar100",
    manual_files=("cifar-100-binary.tar.gz",),
    class_names=_CIFAR100_NAMES,
  ),
  "svhn_cropped": DatasetSpec(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    tfds_name="svhn_cropped",
    # The builder also generates the `extra` split, so it needs all three.
    manual_files=("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
    class_names=_DIGIT_NAMES,
  ),
}
