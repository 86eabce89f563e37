"""The seed's MNIST servable: softmax regression over 28x28 images, trained for real.

Follows TF Serving's example `mnist_saved_model.py`: signature `predict_images` with input
`images` float32 [-1, 784] and output `scores` float32 [-1, 10] (softmax); `serving_default`
is the same function so clients that name no signature get it too.

Training data: MNIST IDX files when the user has them (`--data DIR`); otherwise the 8x8
handwritten digits scikit-learn ships inside its package (no download), upsampled to 28x28
so the model has MNIST's input shape. Which one was used is recorded next to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.models.export import ExportResult, write_provenance
from serving.models.idx import read_idx

IMAGE_PIXELS = 28 * 28
NUM_CLASSES = 10

# The four files of the MNIST distribution; each may also carry a .gz suffix.
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Dataset:
    """Images flattened to [n, 784] float32 in [0, 1], labels int64 in [0, 10)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{data_dir}: missing {stem} (or {stem}.gz) of the MNIST IDX files")


def load_mnist_idx(data_dir: Path) -> Dataset:
    """Load the MNIST IDX files in `data_dir` (train-* and t10k-*, gzip or not)."""
    arrays = {key: read_idx(_find(data_dir, stem)) for key, stem in _MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"{data_dir}: {split} images have shape {images.shape}, expected [n, 28, 28]")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{data_dir}: {images.shape[0]} {split} images but labels of shape {labels.shape}")
    return Dataset(
        name=f"MNIST IDX files from {data_dir}",
        train_x=_flatten(arrays["train_images"], scale=255.0),
        train_y=arrays["train_labels"].astype(np.int64),
        test_x=_flatten(arrays["test_images"], scale=255.0),
        test_y=arrays["test_labels"].astype(np.int64),
    )


def load_sklearn_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 1797 8x8 digits (values 0..16), bilinearly resized to 28x28."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = tf.image.resize(digits.images[..., np.newaxis] / 16.0, (28, 28)).numpy()[..., 0]
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    flat = _flatten(images, scale=1.0)
    labels = digits.target.astype(np.int64)
    return Dataset(
        name="scikit-learn handwritten digits (8x8, resized to 28x28)",
        train_x=flat[train],
        train_y=labels[train],
        test_x=flat[test],
        test_y=labels[test],
    )


def _flatten(images: np.ndarray, scale: float) -> np.ndarray:
    return (images.reshape(len(images), IMAGE_PIXELS) / scale).clip(0.0, 1.0).astype(np.float32)


def train_softmax(data: Dataset, steps: int = 500, batch_size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit W [784, 10], b [10] with Adam on cross-entropy; returns them as numpy arrays."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    weights = tf.Variable(tf.zeros([IMAGE_PIXELS, NUM_CLASSES]))
    bias = tf.Variable(tf.zeros([NUM_CLASSES]))
    optimizer = tf.keras.optimizers.Adam(learning_rate=0.01)
    rng = np.random.default_rng(seed)

    @tf.function
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, weights) + bias
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, [weights, bias]), [weights, bias]))
        return loss

    for _ in range(steps):
        batch = rng.integers(0, len(data.train_x), size=min(batch_size, len(data.train_x)))
        step(data.train_x[batch], data.train_y[batch])
    return weights.numpy(), bias.numpy()


def accuracy(weights: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(x @ weights + bias, axis=1) == y))


def export(output: Path, version: int = 1, data: Path | None = None) -> ExportResult:
    """Train on `data` (MNIST IDX dir) or scikit-learn digits and write output/version/."""
    import tensorflow as tf

    dataset = load_mnist_idx(data) if data is not None else load_sklearn_digits()
    weights, bias = train_softmax(dataset)
    held_out = accuracy(weights, bias, dataset.test_x, dataset.test_y)

    class SoftmaxRegression(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(weights, name="weights")
            self.bias = tf.Variable(bias, name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_PIXELS], tf.float32, name="images")])
        def predict_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.nn.softmax(tf.matmul(images, self.weights) + self.bias)}

    module = SoftmaxRegression()
    target = output / str(version)
    tf.saved_model.save(
        module,
        str(target),
        signatures={"predict_images": module.predict_images, "serving_default": module.predict_images},
    )
    result = ExportResult(
        model="mnist",
        path=target,
        dataset=dataset.name,
        weights="trained (softmax regression, Adam, 500 steps)",
        held_out_accuracy=held_out,
        train_examples=len(dataset.train_x),
        test_examples=len(dataset.test_x),
    )
    write_provenance(result)
    return result
