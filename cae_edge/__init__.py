"""cae-edge: learned image compression for camera nodes at the edge.

Data flow, mirrored by the package layout::

    datasets ──► train/ (Keras CAE) ──► export/ (int8 TFLite pair + manifest)
                                             │
                     camera ──► device/ (preprocess → encode → wire) ──► network ──► device/ (decode)

``train/`` and ``export/`` import TensorFlow; ``device/`` and the shared top-level modules never do.
"""

__version__ = "0.1.0"
