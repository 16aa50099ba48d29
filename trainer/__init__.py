"""Trains the two-tower retrieval model on MovieLens and publishes versions."""

import os

# TensorFlow Recommenders is written for Keras 2; TensorFlow reads this once,
# when it is first imported, so it has to be set before anything imports it.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
