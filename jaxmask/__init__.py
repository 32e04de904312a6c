"""jaxmask: masked sequence models in pure JAX whose numbers match Keras exactly."""
from jaxmask import functional as functional
from jaxmask import nn as nn
from jaxmask.masks import MaskedStandardScaler as MaskedStandardScaler, compute_mask as compute_mask, lengths_to_mask as lengths_to_mask, mask_to_lengths as mask_to_lengths, pad_sequences as pad_sequences
from jaxmask import metrics as metrics
from jaxmask import losses as losses
from jaxmask.losses import masked_loss as masked_loss
from jaxmask import training as training
from jaxmask.training import Trainer as Trainer
from jaxmask import keras_io as keras_io
from jaxmask.errors import UnsafeFileError as UnsafeFileError
from jaxmask import perf as perf
from jaxmask import optimizers as optimizers
