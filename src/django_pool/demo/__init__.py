"""``django-pool demo``: see, in about two minutes, where the ways of pooling differ.

The demo serves a small Django app (:mod:`django_pool.demo.project`) with real
servers, gunicorn (WSGI, gthread workers) and uvicorn (ASGI), once per way of
handling database connections (:mod:`~django_pool.demo.modes`), in scenarios
where they differ (an async view that awaits, a database restart, session
state left behind, a leaked connection; :mod:`~django_pool.demo.scenarios`)
and in the throughput rows (:mod:`~django_pool.demo.throughput`). It drives
each with an HTTP load generator (:mod:`~django_pool.demo.load`) and watches
the database server while it does (:mod:`~django_pool.demo.database`).
:mod:`~django_pool.demo.cli` runs it all and :mod:`~django_pool.demo.report`
prints and draws the results.
"""
