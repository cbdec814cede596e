"""Scoring candidates for the search: proxy data, proxy training, its cache, zero-cost proxies, and fidelity.

`load_data` reduces a data set to a small in-memory subset at the proxy resolution; `proxy_score` trains one
`ArchSpec` on it under a `ProxyBudget`; `ProxyCache` makes that happen once per (arch, settings, data);
`zero_cost_scores` ranks untrained networks from one batch; `measure_fidelity` says how far all of them can be
trusted, as rank correlations against a longer training.
"""

from .cache import ProxyCache, cache_key
from .data import DataError, ProxyData, load_data
from .fidelity import FidelityReport, FidelityRow, measure_fidelity, sample_specs
from .proxy import EpochReport, ProxyBudget, ProxyResult, proxy_score
from .zero_cost import ZERO_COST_PROXIES, zero_cost_scores

__all__ = [
    "ZERO_COST_PROXIES",
    "DataError",
    "EpochReport",
    "FidelityReport",
    "FidelityRow",
    "ProxyBudget",
    "ProxyCache",
    "ProxyData",
    "ProxyResult",
    "cache_key",
    "load_data",
    "measure_fidelity",
    "proxy_score",
    "sample_specs",
    "zero_cost_scores",
]
