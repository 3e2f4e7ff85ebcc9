"""gpulayers: neural-network layers with CUDA kernels of their own and a NumPy reference.

NumPy in, NumPy out (the reference); CuPy in, CuPy out (the CUDA kernels in ``cuda/``);
NumPy inside ``with gpulayers.simulate():`` runs the same kernels on the CPU simulator.
"""
from . import losses, optimizers
from .kernels import gpu_available, simulate
from .layers.base import Layer
from .layers.convolution import Conv2D, Conv2DTranspose
from .layers.core import Activation, Dense, Dropout, Flatten
from .layers.normalization import BatchNormalization
from .layers.pooling import (
    AveragePooling1D,
    AveragePooling2D,
    AveragePooling3D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalAveragePooling3D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    GlobalMaxPooling3D,
    MaxPooling1D,
    MaxPooling2D,
    MaxPooling3D,
)
from .layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from .layers.upsampling import UpSampling1D, UpSampling2D, UpSampling3D
from .models import Sequential

__version__ = "0.1.0"

__all__ = [
    "Layer", "simulate", "gpu_available", "BatchNormalization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "SimpleRNN", "LSTM", "GRU", "Bidirectional",
    "Dense", "Conv2D", "Conv2DTranspose", "Activation", "Flatten", "Dropout", "Sequential", "losses", "optimizers",
]
