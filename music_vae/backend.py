"""Keras, imported once for every module: its TensorFlow start-up lines quieted.

TensorFlow prints lines from C++ at import and when it first looks for devices that no
setting hides; importing Keras here, with file descriptor 2 silenced, keeps them off every
command's output. Every module takes ``keras``, ``layers`` and ``ops`` from here.
"""

import os

from music_vae.files import quiet_stderr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning lines

with quiet_stderr():
    import keras
    from keras import layers, ops

    if keras.backend.backend() == "tensorflow":
        import tensorflow

        tensorflow.config.list_physical_devices()  # where TensorFlow logs what it found

__all__ = ["keras", "layers", "ops"]
