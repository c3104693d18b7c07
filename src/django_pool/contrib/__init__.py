"""Optional integrations, each needing its own extra; none is imported by the rest.

* :mod:`django_pool.contrib.prometheus`: a ``prometheus_client`` collector for
  the pools of this process (``pip install django-pool[prometheus]``).
* :mod:`django_pool.contrib.views` and :mod:`django_pool.contrib.urls`: a
  protected Django view returning the pools' stats as JSON, for health checks
  (needs only Django).
"""
