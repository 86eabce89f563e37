"""The recurrent pieces the NMT and DeepSpeech servables share, as plain TF ops on tf.Variables.

Plain ops rather than Keras layers: they export and load through TF1's SavedModel loader (what
tensorflow_model_server and optdse-serve use) with exactly one variable each, and the loop is a
single tf.scan whose per-step work is only the recurrence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf


def lstm_cell(gates: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One LSTM step from pre-activation gates [batch, 4 x units] (i, f, g, o) and the cell
    state; forget bias 1, as TF's and DeepSpeech's cells. Returns the new (h, c)."""
    import tensorflow as tf

    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def bidirectional_lstm(x: tf.Tensor, w: dict[str, tf.Variable], units: int) -> tuple[tf.Tensor, ...]:
    """Both directions of an LSTM over time-major `x` [time, batch, features], in one tf.scan.

    `w` holds {forward,backward}_{input,recurrent,bias}. The input projections of all steps are
    one matrix multiply before the loop. Returns (h_forward, c_forward, h_backward, c_backward),
    each [time, batch, units]; the backward ones are in reversed time (their last step has seen
    the whole sequence), so reverse them to line up with the input.
    """
    import tensorflow as tf

    forward_in = tf.einsum("tbe,eg->tbg", x, w["forward_input"]) + w["forward_bias"]
    backward_in = tf.einsum("tbe,eg->tbg", tf.reverse(x, [0]), w["backward_input"]) + w["backward_bias"]
    zeros = tf.zeros([tf.shape(x)[1], units])

    def step(state: tuple[tf.Tensor, ...], gates: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        hf, cf, hb, cb = state
        hf, cf = lstm_cell(gates[0] + tf.matmul(hf, w["forward_recurrent"]), cf)
        hb, cb = lstm_cell(gates[1] + tf.matmul(hb, w["backward_recurrent"]), cb)
        return hf, cf, hb, cb

    return tf.scan(step, (forward_in, backward_in), initializer=(zeros,) * 4)
