"""fpc_keras: ultrasound deep-learning papers reproduced, measured and shipped as TFLite.

Kept free of TensorFlow imports so that the TF-free parts (readers, metrics, the edge runner's helpers)
import in a fraction of a second.
"""
__version__ = "0.1.0"
