"""Flax NNX layers with Keras names, weights and mask semantics."""

from jaxmask.nn._core import Activation as Activation
from jaxmask.nn._core import Dense as Dense
from jaxmask.nn._core import Dropout as Dropout
from jaxmask.nn._core import Embedding as Embedding
from jaxmask.nn._core import GlobalAveragePooling1D as GlobalAveragePooling1D
from jaxmask.nn._core import Layer as Layer
from jaxmask.nn._core import Masking as Masking
from jaxmask.nn._core import TimeDistributed as TimeDistributed
from jaxmask.nn._recurrent import GRU as GRU
from jaxmask.nn._recurrent import LSTM as LSTM
from jaxmask.nn._recurrent import Bidirectional as Bidirectional
from jaxmask.nn._recurrent import SimpleRNN as SimpleRNN
from jaxmask.nn._sequential import Sequential as Sequential
from jaxmask.nn._graph import Input as Input
from jaxmask.nn._graph import KerasTensor as KerasTensor
from jaxmask.nn._model import Model as Model
from jaxmask.nn._recurrent import RNNState as RNNState
from jaxmask.nn._ops import Op as Op
from jaxmask.nn._attention import AdditiveAttention as AdditiveAttention
from jaxmask.nn._attention import Attention as Attention
from jaxmask.nn._attention import MultiHeadAttention as MultiHeadAttention
