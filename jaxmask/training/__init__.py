"""Training: ``Trainer`` (Keras' fit/evaluate/predict), the jit-compiled pure step for custom loops,
callbacks, atomic checkpoints, length bucketing and data-parallel placement."""

from jaxmask.training._callbacks import BackupAndRestore as BackupAndRestore
from jaxmask.training._callbacks import Callback as Callback
from jaxmask.training._callbacks import CSVLogger as CSVLogger
from jaxmask.training._callbacks import EarlyStopping as EarlyStopping
from jaxmask.training._callbacks import History as History
from jaxmask.training._callbacks import JSONLogger as JSONLogger
from jaxmask.training._callbacks import ModelCheckpoint as ModelCheckpoint
from jaxmask.training._callbacks import ProgressBar as ProgressBar
from jaxmask.training._checkpoint import CheckpointManager as CheckpointManager
from jaxmask.training._data import Buckets as Buckets
from jaxmask.training._data import batch_mesh as batch_mesh
from jaxmask.training._data import epoch_plan as epoch_plan
from jaxmask.training._data import epoch_rng as epoch_rng
from jaxmask.training._data import padded_length as padded_length
from jaxmask.training._data import place_batch as place_batch
from jaxmask.training._data import process_rows as process_rows
from jaxmask.training._data import valid_lengths as valid_lengths
from jaxmask.training._step import Accumulators as Accumulators
from jaxmask.training._step import TrainState as TrainState
from jaxmask.training._step import TrainStep as TrainStep
from jaxmask.training._step import loss_mask as loss_mask
from jaxmask.training._step import make_train_step as make_train_step
from jaxmask.training._trainer import Trainer as Trainer
from jaxmask.training._trainer import load_weights as load_weights
from jaxmask.training._callbacks import LearningRateScheduler as LearningRateScheduler
from jaxmask.training._callbacks import ReduceLROnPlateau as ReduceLROnPlateau
from jaxmask.training._callbacks import TensorBoard as TensorBoard
from jaxmask.training._callbacks import TerminateOnNaN as TerminateOnNaN
from jaxmask.training._tfevents import read_scalars as read_tensorboard_scalars
from jaxmask.training._step import Logs as Logs
