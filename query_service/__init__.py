"""Hosts the query tower behind TensorFlow Serving's gRPC API."""

import os

# The exported tower was built with Keras 2; TensorFlow reads this once, when
# it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
