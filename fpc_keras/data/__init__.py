"""Dataset readers (`datasets.py` names them), records and splits, image and video decoding, tf.data pipelines.

Importing this package imports nothing else, so the TF-free parts (images.py, video.py) load on an edge board
with numpy and Pillow only.
"""
