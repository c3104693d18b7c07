"""Optional integrations, each needing its own extra; none is imported by the rest.

* :mod:`django_pool.contrib.prometheus`: Prometheus metrics of the pools, one
  process per scrape or every worker in one (multiprocess mode)
  (``pip install django-pool[prometheus]``).
* :mod:`django_pool.contrib.opentelemetry`: the pool metrics of OpenTelemetry's
  semantic conventions (``pip install django-pool[opentelemetry]``).
* :mod:`django_pool.contrib.celery`: keeps each Celery prefork child's pool
  open across tasks (Celery 5.6+'s Django fixup closes it after each task).
* :mod:`django_pool.contrib.views` and :mod:`django_pool.contrib.urls`: a
  protected Django view returning the pools' stats as JSON, for health checks
  (needs only Django).
"""
