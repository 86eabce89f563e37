"""`optdse model export mnist`: a real IDX loader, real training, TF Serving's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.models.idx import IdxFormatError, parse_idx, read_idx, write_idx
from serving.models.mnist import load_sklearn_digits
from tests.serving_process import export_model


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(read_idx(tmp_path / name), images)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "f.idx", floats)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_idx_header_is_big_endian(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.array([7, 1, 4], dtype=np.uint8))
    assert (tmp_path / "labels").read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x01\x04"


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [(b"\x01\x02\x08\x01", "magic"), (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "type code"),
     (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"), (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01", "needs 5")],
)
def test_idx_errors(raw: bytes, mentions: str) -> None:
    with pytest.raises(IdxFormatError, match=mentions):
        parse_idx(raw, source="bad.idx")


def write_small_mnist(directory: Path) -> None:
    """MNIST-format IDX files (uint8 28x28 images, uint8 labels) from scikit-learn's digits."""
    digits = load_sklearn_digits(test_fraction=0.25, seed=3)
    for split, x, y in (("train", digits.train_x, digits.train_y), ("t10k", digits.test_x, digits.test_y)):
        images = (x.reshape(-1, 28, 28) * 255).round().astype(np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte", y.astype(np.uint8))


@pytest.mark.slow
def test_export_from_idx_files_with_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_small_mnist(data)
    result = export_model("mnist", tmp_path / "model", "--data", str(data), "--version", "4")
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("held-out accuracy:")[1].split()[0])
    assert accuracy > 0.85, result.stdout
    provenance = json.loads((tmp_path / "model/4/assets.extra/optdse_model.json").read_text())
    assert provenance["dataset"].startswith("MNIST IDX files")
    assert provenance["test_examples"] == 449
    loaded = tf.saved_model.load(str(tmp_path / "model/4"))
    for name in ("predict_images", "serving_default"):
        signature = loaded.signatures[name]
        assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 784]
        scores = signature(images=tf.zeros([2, 784]))["scores"].numpy()
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)

    again = export_model("mnist", tmp_path / "model", "--data", str(data), "--version", "4")
    assert again.returncode == 2 and "already holds a model" in again.stderr


@pytest.mark.slow
def test_default_export_uses_scikit_learn_digits(mnist_base_path: Path) -> None:
    provenance = json.loads((mnist_base_path / "1/assets.extra/optdse_model.json").read_text())
    assert provenance["dataset"].startswith("scikit-learn handwritten digits")
    assert provenance["held_out_accuracy"] > 0.9


@pytest.mark.slow
def test_missing_idx_files_are_a_clear_error(tmp_path: Path) -> None:
    result = export_model("mnist", tmp_path / "model", "--data", str(tmp_path))
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("output", ["/proc/optdse-cannot-write-here", "/dev/null/model"])
def test_an_export_that_fails_is_one_line(output: str) -> None:
    """A path TensorFlow cannot write is the user's error: one line and exit code 2."""
    done = export_model("mnist", Path(output))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("optdse model export: error: ") and len(done.stderr.strip().splitlines()) == 1
