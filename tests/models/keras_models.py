"""The eight acceptance models live in ``parity.graph_cases.examples`` (they are parity catalogue cases too)."""

from parity.graph_cases.examples import B, F, MODELS, T, VOCAB  # noqa: F401
from parity.graph_cases.examples import *  # noqa: F401,F403
