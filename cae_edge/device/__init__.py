"""Everything that runs on a camera node or a receiver. Never imports TensorFlow or Keras.

The interpreter import lives in one place, :mod:`cae_edge.device.litert`.
"""
