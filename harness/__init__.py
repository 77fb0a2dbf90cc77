"""failover-harness: proves a kernel survives the failure of its cachefiles on-demand daemon."""

__version__ = "0.1.0"
