"""Import TensorFlow without its start-up noise on stderr.

TensorFlow's C++ side prints several lines at import and at first device probing (absl's
"before InitializeLog" notice, oneDNN and CUDA-stub notes) before TF_CPP_MIN_LOG_LEVEL takes
effect. Every replica and load-generator process would repeat them. They are captured here
and shown only if the import fails.

`import tensorflow` also eagerly imports Keras (tensorflow/__init__.py loads
keras.src.optimizers), and Keras in turn scikit-learn and SciPy: about 1.8 s and ~200 MB of
RSS that a model server and a load generator never use. `without_keras=True` makes that one
import fail, which TensorFlow's __init__ tolerates (it catches the ImportError).
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType


def import_tensorflow(without_keras: bool = False) -> ModuleType:
    """Import (once) and return the `tensorflow` module; call before any tensorflow.* import."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if without_keras and "keras" not in sys.modules:
        sys.modules["keras.src.optimizers"] = None  # type: ignore[assignment]  # import fails fast
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing prints too; keep it inside
            tf.get_logger().setLevel("ERROR")  # deprecation notices of the v1 loader TF Serving's layout needs
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf
