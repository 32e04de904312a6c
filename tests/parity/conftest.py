"""The parity tests run Keras 3 on TensorFlow in process (keras3-jax runs in a subprocess)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
