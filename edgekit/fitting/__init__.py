"""`edgekit fit`: compress and convert a model to fit a target within an accuracy tolerance.

The package: ``types`` (rungs, candidates, results), ``ladder`` (which candidates per runtime and
level), ``build`` (one candidate built and measured; ``clustered``: the rungs built from the
clustered float model), ``select`` (the winner), ``cache`` (verified
candidate cache), ``search`` (the search itself and its output).
"""

from __future__ import annotations

from edgekit.fitting.ladder import ladder
from edgekit.fitting.search import check_labels, fit
from edgekit.fitting.types import GOALS, Candidate, FitResult, Rung

__all__ = ["GOALS", "Candidate", "FitResult", "Rung", "check_labels", "fit", "ladder"]
