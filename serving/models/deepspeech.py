"""The seed's DeepSpeech servable: raw 16 kHz audio in, per-frame character logits out.

Modelled on Mozilla DeepSpeech v0.1.0, the version the seed report served, with its feature
extraction moved into the graph so a request carries audio, not features: 26 MFCCs per 25 ms
window (400 samples) every 10 ms (160 samples), normalised per clip (DeepSpeech whitened its
inputs), with 9 frames of context on each side (zeros past the edges; 19 x 26 = 494 features
per frame). Then DeepSpeech's network: three dense layers with clipped ReLU min(max(x, 0), 20),
a bidirectional LSTM (forget bias 1, as its BasicLSTMCell), a fourth clipped-ReLU dense layer
over both directions, and per-frame logits over the 28 characters plus the CTC blank (last).
The CTC decode is left to the client, as DeepSpeech ran it outside the acoustic model.

n_hidden is 512 rather than DeepSpeech's 2048, so a request runs in reasonable time on a
2-core CPU (~5.6M parameters instead of ~86M); the architecture, and how cost grows with the
audio's length (frames, and the LSTM's sequential steps), are DeepSpeech's. No data or trained
weights can be downloaded here, so the weights are a seeded random initialisation (normal,
stddev 0.046875, DeepSpeech's default); latency depends on the audio's length, not on them.

Signature `transcribe` (also `serving_default`): input `audio` float32 [batch, samples], mono
samples in [-1, 1]; outputs `logits` float32 [batch, frames, 29] and `frames` int32 [batch].
A clip shorter than one window is zero-padded to one, so every request yields >= 1 frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.models.export import ExportResult, record_untrained, save_servable
from serving.models.layers import bidirectional_lstm

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
STEP = 160  # 10 ms
FFT_LENGTH = 512
N_MFCC = 26
N_CONTEXT = 9  # frames of context on each side
N_INPUT = N_MFCC * (2 * N_CONTEXT + 1)  # 494
N_HIDDEN = 512  # DeepSpeech: 2048
ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # DeepSpeech's alphabet.txt; the CTC blank follows
N_CLASSES = len(ALPHABET) + 1  # 29
RELU_CLIP = 20.0
SIGNATURE = "transcribe"
INPUT = "audio"
SEED = 0
_STDDEV = 0.046875  # DeepSpeech's default b*_stddev and h*_stddev


def random_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Normal(0, 0.046875) kernels and biases for every layer, as DeepSpeech initialised them."""
    rng = np.random.default_rng(seed)
    shapes = {
        "h1": (N_INPUT, N_HIDDEN), "b1": (N_HIDDEN,),
        "h2": (N_HIDDEN, N_HIDDEN), "b2": (N_HIDDEN,),
        "h3": (N_HIDDEN, N_HIDDEN), "b3": (N_HIDDEN,),
        "h5": (2 * N_HIDDEN, N_HIDDEN), "b5": (N_HIDDEN,),
        "h6": (N_HIDDEN, N_CLASSES), "b6": (N_CLASSES,),
    }
    for direction in ("forward", "backward"):  # LSTM: [input; h] -> gates i, f, g, o
        shapes[f"{direction}_input"] = (N_HIDDEN, 4 * N_HIDDEN)
        shapes[f"{direction}_recurrent"] = (N_HIDDEN, 4 * N_HIDDEN)
        shapes[f"{direction}_bias"] = (4 * N_HIDDEN,)
    return {name: rng.normal(0.0, _STDDEV, shape).astype(np.float32) for name, shape in shapes.items()}


def export(output: Path, version: int = 1, data: Path | None = None) -> ExportResult:
    """Write the random-initialised recogniser to output/version/ (DeepSpeech takes no data)."""
    if data is not None:
        raise ValueError("the DeepSpeech servable is not trained and takes no data")
    import tensorflow as tf

    def clipped_relu(x: tf.Tensor) -> tf.Tensor:
        return tf.minimum(tf.nn.relu(x), RELU_CLIP)

    class SpeechToText(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = {name: tf.Variable(value, name=name) for name, value in random_weights().items()}
            self.mel = tf.signal.linear_to_mel_weight_matrix(
                N_MFCC, FFT_LENGTH // 2 + 1, SAMPLE_RATE, 0.0, SAMPLE_RATE / 2)  # a constant

        def features(self, audio: tf.Tensor) -> tf.Tensor:
            """[batch, samples] -> [batch, frames, 494]: MFCCs with +-9 frames of context."""
            short = tf.maximum(WINDOW - tf.shape(audio)[1], 0)
            audio = tf.pad(audio, [[0, 0], [0, short]])  # at least one window
            spectrum = tf.signal.stft(audio, WINDOW, STEP, FFT_LENGTH)
            power = tf.math.square(tf.abs(spectrum)) / FFT_LENGTH
            log_mel = tf.math.log(tf.tensordot(power, self.mel, 1) + 1e-6)
            mfcc = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)  # [batch, frames, 26]
            mean, variance = tf.nn.moments(mfcc, axes=[1, 2], keepdims=True)
            mfcc = (mfcc - mean) / (tf.sqrt(variance) + 1e-6)  # whitened per clip
            padded = tf.pad(mfcc, [[0, 0], [N_CONTEXT, N_CONTEXT], [0, 0]])
            windows = tf.signal.frame(padded, 2 * N_CONTEXT + 1, 1, axis=1)  # [batch, frames, 19, 26]
            return tf.reshape(windows, [tf.shape(audio)[0], -1, N_INPUT])

        def recurrent(self, x: tf.Tensor) -> tf.Tensor:
            """[batch, frames, 512] -> [batch, frames, 1024], forward and backward outputs joined."""
            hf, _, hb, _ = bidirectional_lstm(tf.transpose(x, [1, 0, 2]), self.w, N_HIDDEN)  # time-major
            return tf.transpose(tf.concat([hf, tf.reverse(hb, [0])], axis=-1), [1, 0, 2])

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name=INPUT)])
        def transcribe(self, audio: tf.Tensor) -> dict[str, tf.Tensor]:
            w = self.w
            x = self.features(audio)
            for layer in ("1", "2", "3"):
                x = clipped_relu(tf.einsum("bti,io->bto", x, w[f"h{layer}"]) + w[f"b{layer}"])
            x = clipped_relu(tf.einsum("bti,io->bto", self.recurrent(x), w["h5"]) + w["b5"])
            logits = tf.einsum("bti,io->bto", x, w["h6"]) + w["b6"]
            shape = tf.shape(logits)
            return {"logits": logits, "frames": tf.fill(shape[:1], shape[1])}

    module = SpeechToText()
    target = output / str(version)
    save_servable(module, SIGNATURE, module.transcribe, target)
    return record_untrained("deepspeech", target, f"random initialisation (seed {SEED}); latency depends on the "
                                                  "audio length, not on weight values")
