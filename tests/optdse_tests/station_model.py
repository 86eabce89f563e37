"""A small SavedModel that is not one of the seed's, exported by the tests themselves: what a
user would point optdse at. Run as a script (it imports TensorFlow, which a test process that
imported optdse.protos cannot): `python station_model.py BASE_PATH`.

Signature `estimate`: `readings` float32 [?, 3], `station` int64 [?] and `tag` string [?]
-> `estimate` float32 [?] (the readings' sum, plus the station id, plus the tag's length).
Signature `smooth`: `series` float32 [?, ?] (a batch of variable-length sequences) -> `mean`
float32 [?]; its axis 1 is what `size_axis: 1` grows.
"""

from __future__ import annotations

import sys
from pathlib import Path


def export(base_path: Path) -> Path:
    import tensorflow as tf

    class Station(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="readings"),
                                      tf.TensorSpec([None], tf.int64, name="station"),
                                      tf.TensorSpec([None], tf.string, name="tag")])
        def estimate(self, readings: tf.Tensor, station: tf.Tensor, tag: tf.Tensor) -> dict[str, tf.Tensor]:
            total = tf.reduce_sum(readings, axis=1) + tf.cast(station, tf.float32)
            return {"estimate": total + tf.cast(tf.strings.length(tag), tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="series")])
        def smooth(self, series: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"mean": tf.reduce_mean(series, axis=1)}

    module = Station()
    target = base_path / "1"
    tf.saved_model.save(module, str(target), signatures={"estimate": module.estimate, "smooth": module.smooth})
    return target


if __name__ == "__main__":
    print(export(Path(sys.argv[1])))
