"""The seed's Inception V3 servable: JPEG bytes in, top-5 ImageNet classes out.

Follows TF Serving's example `inception_saved_model.py`: signature `predict_images` (also
`serving_default`) takes `images`, a string tensor [batch] of JPEG files of any size, and the
graph decodes, resizes and scales them itself, so a request's cost grows with the JPEG it
carries (decoding) while the convolutions always see 299x299. Outputs: `scores` float32
[batch, 5] (the top-5 softmax probabilities) and `classes` int32 [batch, 5] (their ids).

The network is keras.applications.InceptionV3 (1000 classes). No weights can be downloaded
here, so it is random-initialised with a fixed seed unless the user passes a Keras weights
file; latency depends on shapes, not on weight values. Which one was used is recorded.

How Keras 3 is saved: the exported tf.Module holds the tf.Variables behind the model's
keras.Variables (`variable.value`), not the model. Holding the model itself saves fine for TF2's
tf.saved_model.load, but each keras.Variable is exported as a second, checkpoint-only variable
("Variable_N") while the graph reads the original, so TF1's loader (tensorflow_model_server,
optdse-serve) restores the copies and then fails on uninitialised variables. Keras'
ExportArchive serves correctly but checkpoints every variable twice (a ~190 MB export).
Tracking the backing variables gives one copy, read and restored under the same handle.
"""

from __future__ import annotations

from pathlib import Path

from serving.models.export import ExportResult, record_untrained, save_servable

INPUT_EDGE = 299
NUM_CLASSES = 1000
TOP_K = 5
SIGNATURE = "predict_images"
INPUT = "images"
SEED = 0


def export(output: Path, version: int = 1, weights: Path | None = None) -> ExportResult:
    """Write Inception V3 (random, or `weights` loaded) with JPEG decoding to output/version/."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    model = keras.applications.InceptionV3(include_top=True, classes=NUM_CLASSES, weights=None)
    if weights is not None:
        model.load_weights(str(weights))

    def preprocess(jpeg: tf.Tensor) -> tf.Tensor:
        """One JPEG of any size -> [299, 299, 3] float32 in [-1, 1] (InceptionV3's input)."""
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)  # [0, 1]
        image = tf.image.resize(image, [INPUT_EDGE, INPUT_EDGE], method="bilinear")
        return (image - 0.5) * 2.0

    class Inception(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            # Only the backing tf.Variables are tracked (see the module docstring); the model is
            # reached through the closure, so its keras.Variables are not exported twice.
            self.weights = [variable.value for variable in model.variables]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
        def predict_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            # A batch of 0 would otherwise fail inside the convolutions with a shape error.
            check = tf.debugging.assert_positive(tf.size(images), message="images: the request holds no JPEG")
            with tf.control_dependencies([check]):
                images = tf.identity(images)
            # map_fn, not a batched op: the JPEGs in one request may differ in size.
            pixels = tf.map_fn(preprocess, images,
                               fn_output_signature=tf.TensorSpec([INPUT_EDGE, INPUT_EDGE, 3], tf.float32))
            probabilities = model(pixels, training=False)  # the top layer applies softmax
            scores, classes = tf.math.top_k(probabilities, k=TOP_K)
            return {"scores": scores, "classes": tf.cast(classes, tf.int32)}

    module = Inception()
    target = output / str(version)
    save_servable(module, SIGNATURE, module.predict_images, target)
    _check_variables_saved(target, len(model.variables))
    return record_untrained("inception", target, f"user weights file {weights}" if weights is not None else
                            f"random initialisation (seed {SEED}); latency does not depend on weight values, "
                            "only on shapes")


def _check_variables_saved(target: Path, expected: int) -> None:
    """Fail loudly unless the checkpoint holds each model variable once (none missing, none
    duplicated: a Keras upgrade changing how its variables export would show here)."""
    import tensorflow as tf

    saved = [name for name, _ in tf.train.list_variables(str(target / "variables" / "variables"))
             if name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")]
    if len(saved) != expected:
        raise RuntimeError(f"{target}: the checkpoint holds {len(saved)} variables, the model has {expected}")
