"""The seed's NMT servable: an attention RNN encoder-decoder with greedy decoding in the graph.

Modelled on TF's NMT tutorial (IWSLT'15 English->Vietnamese: 17191 / 7709 word vocabularies),
made smaller so it serves on a 2-core CPU: 256-d embeddings, one bidirectional LSTM layer
(256 units per direction), a 512-unit LSTM decoder started from the encoder's final states,
Luong (multiplicative) attention with input feeding, and a projection to the target vocabulary.

Decoding is greedy and runs inside the graph (a tf.while_loop) for at most
ceil(DECODING_LENGTH_FACTOR * source length) steps, capped at MAX_DECODE, stopping early once
every row has emitted EOS. No data or trained weights can be downloaded here, so the weights
are a seeded random initialisation. An untrained decoder would emit EOS at arbitrary steps and
make latency depend on weight values, so the projection's EOS bias is set very negative: EOS is
never emitted and decoding always runs to the maximum length, i.e. a request costs what
translating a sentence of twice the source length costs. Latency depends on shapes only.

Signature `translate` (also `serving_default`): input `tokens` int32 [batch, source length]
(ids in [3, SOURCE_VOCAB)); outputs `tokens` int32 [batch, steps] and `lengths` int32 [batch].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.models.export import ExportResult, record_untrained, save_servable
from serving.models.layers import bidirectional_lstm, lstm_cell

SOURCE_VOCAB = 17191  # TF NMT's IWSLT'15 English vocabulary
TARGET_VOCAB = 7709  # ... and Vietnamese
UNK, SOS, EOS = 0, 1, 2  # 0 also pads
EMBEDDING = 256
ENCODER_UNITS = 256  # per direction; the decoder gets both, so DECODER_UNITS = 2 * ENCODER_UNITS
DECODER_UNITS = 2 * ENCODER_UNITS
MAX_SOURCE_TOKENS = 1171  # the longest source the seed measured
DECODING_LENGTH_FACTOR = 2.0  # TF NMT's default: decode at most 2x the source length
MAX_DECODE = 2400
SIGNATURE = "translate"
INPUT = "tokens"
SEED = 0
_EOS_BIAS = -1e9  # suppresses EOS so decoding always runs to the maximum length


def random_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Uniform(+-1/sqrt(fan_in)) matrices (the usual LSTM initialisation), zero biases."""
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(rows)
        return rng.uniform(-bound, bound, size=(rows, cols)).astype(np.float32)

    gates_enc, gates_dec = 4 * ENCODER_UNITS, 4 * DECODER_UNITS
    projection_bias = np.zeros(TARGET_VOCAB, np.float32)
    projection_bias[EOS] = _EOS_BIAS
    weights = {
        "source_embedding": matrix(SOURCE_VOCAB, EMBEDDING),
        "target_embedding": matrix(TARGET_VOCAB, EMBEDDING),
        "attention_score": matrix(DECODER_UNITS, DECODER_UNITS),  # Luong "general": h W k
        "attention_layer": matrix(2 * DECODER_UNITS, DECODER_UNITS),  # tanh(W [context; h])
        "projection": matrix(DECODER_UNITS, TARGET_VOCAB),
        "projection_bias": projection_bias,
        # Decoder input: [previous target embedding; previous attention (input feeding); h].
        "decoder_kernel": matrix(EMBEDDING + 2 * DECODER_UNITS, gates_dec),
        "decoder_bias": np.zeros(gates_dec, np.float32),
    }
    for direction in ("forward", "backward"):
        weights[f"{direction}_input"] = matrix(EMBEDDING, gates_enc)
        weights[f"{direction}_recurrent"] = matrix(ENCODER_UNITS, gates_enc)
        weights[f"{direction}_bias"] = np.zeros(gates_enc, np.float32)
    return weights


def export(output: Path, version: int = 1, data: Path | None = None) -> ExportResult:
    """Write the random-initialised translator to output/version/ (NMT takes no data)."""
    if data is not None:
        raise ValueError("the NMT servable is not trained and takes no data")
    import tensorflow as tf

    class Translator(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = {name: tf.Variable(value, name=name) for name, value in random_weights().items()}

        def encode(self, tokens: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            """Encoder outputs [batch, time, 512] and the final (h, c), both directions joined."""
            embedded = tf.transpose(tf.nn.embedding_lookup(self.w["source_embedding"], tokens), [1, 0, 2])
            hf, cf, hb, cb = bidirectional_lstm(embedded, self.w, ENCODER_UNITS)
            outputs = tf.concat([hf, tf.reverse(hb, [0])], axis=-1)  # [time, batch, 512]
            return (tf.transpose(outputs, [1, 0, 2]),
                    tf.concat([hf[-1], hb[-1]], axis=-1), tf.concat([cf[-1], cb[-1]], axis=-1))

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=INPUT)])
        def translate(self, tokens: tf.Tensor) -> dict[str, tf.Tensor]:
            w = self.w
            source_length = tf.shape(tokens)[1]
            tf.debugging.assert_positive(source_length, message="tokens: the source sentence is empty")
            memory, h, c = self.encode(tokens)
            keys = tf.einsum("btd,de->bte", memory, w["attention_score"])
            batch = tf.shape(tokens)[0]
            max_steps = tf.minimum(
                tf.cast(tf.math.ceil(DECODING_LENGTH_FACTOR * tf.cast(source_length, tf.float32)), tf.int32),
                MAX_DECODE)

            def body(t, previous, attention, h, c, finished, lengths, emitted):
                x = tf.concat([tf.nn.embedding_lookup(w["target_embedding"], previous), attention, h], axis=-1)
                h, c = lstm_cell(tf.matmul(x, w["decoder_kernel"]) + w["decoder_bias"], c)
                alignment = tf.nn.softmax(tf.einsum("bd,btd->bt", h, keys))
                context = tf.einsum("bt,btd->bd", alignment, memory)
                attention = tf.tanh(tf.matmul(tf.concat([context, h], axis=-1), w["attention_layer"]))
                logits = tf.matmul(attention, w["projection"]) + w["projection_bias"]
                token = tf.argmax(logits, axis=-1, output_type=tf.int32)
                lengths += tf.cast(~finished, tf.int32)  # counts the EOS step, as TF NMT does
                finished |= tf.equal(token, EOS)
                return t + 1, token, attention, h, c, finished, lengths, emitted.write(t, token)

            def cond(t, previous, attention, h, c, finished, lengths, emitted):
                return (t < max_steps) & ~((t > 0) & tf.reduce_all(finished))  # t > 0: a row for batch 0

            state = (0, tf.fill([batch], SOS), tf.zeros([batch, DECODER_UNITS]), h, c,
                     tf.zeros([batch], tf.bool), tf.zeros([batch], tf.int32),
                     tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]))
            *_, lengths, emitted = tf.while_loop(cond, body, state)
            return {"tokens": tf.transpose(emitted.stack()), "lengths": lengths}

    module = Translator()
    target = output / str(version)
    save_servable(module, SIGNATURE, module.translate, target)
    return record_untrained("nmt", target, f"random initialisation (seed {SEED}), EOS suppressed so decoding runs "
                                           "to 2x the source length; latency depends on shapes, not weight values")
