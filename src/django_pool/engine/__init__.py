"""The pool engine: driver-agnostic, standard library only, no Django.

* :mod:`.pool`: :class:`Pool`, its one lock and invariant, the checkout flow
  (lend, return, park) and its life cycle (open, close, resize, drain, fork);
* :mod:`.growth`: opening connections, connector threads, back-off;
* :mod:`.maintenance`: the background thread (idle and expired connections,
  leaks, reclaiming from borrowers whose thread ended);
* :mod:`.stats`: counters, histograms, timing listeners;
* :mod:`.slots`: what is kept about each connection and each waiting request;
* :mod:`.arguments`: checks of the pool's arguments;
* :mod:`.fork`, :mod:`.watchdog`, :mod:`.histogram`: fork safety, the
  deadline on health checks, the fixed-bucket histograms.

Driver specifics are in :mod:`django_pool.adapters`.
"""

from .pool import Pool

__all__ = ["Pool"]
