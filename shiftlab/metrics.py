"""The shift metrics (an alias of :mod:`shiftlab.measure.metrics`): pure functions of model outputs."""

from shiftlab.measure.metrics import *  # noqa: F401,F403
from shiftlab.measure.metrics import __all__  # noqa: F401
