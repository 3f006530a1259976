"""A heavy app for the preload benchmark: numpy, pandas and scipy, about 120 MB once imported.

Jobs that import a data stack at the top of their module are the common case that makes exec'd
workers expensive: every worker pays for the import again, in memory and in start-up time.
"""

from __future__ import annotations

import numpy
import pandas
import scipy.optimize
import scipy.signal
import scipy.stats


def summarize(rows: int, seed: int) -> float:
    """A small piece of real work with the whole stack: a frame, its stats, a fit."""
    generator = numpy.random.default_rng(seed)
    frame = pandas.DataFrame({"x": generator.normal(size=rows), "y": generator.normal(size=rows)})
    described = scipy.stats.describe(frame["x"].to_numpy())
    smoothed = scipy.signal.savgol_filter(frame["y"].to_numpy(), 11, 3)
    fit = scipy.optimize.minimize_scalar(lambda a: float(((frame["x"] * a - smoothed) ** 2).mean()))
    return float(described.mean + fit.x)
