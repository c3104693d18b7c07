"""``django-pool demo``: see, in a minute or two, why a connection pool matters.

The demo serves a small Django app (:mod:`django_pool.demo.project`) with real
servers, gunicorn (WSGI, gthread workers) and uvicorn (ASGI), once per way of
handling database connections (:mod:`~django_pool.demo.modes`), drives each
with an HTTP load generator (:mod:`~django_pool.demo.load`), and watches the
database server while it does (:mod:`~django_pool.demo.database`): how many
connections were open at once and how many were opened. :mod:`~django_pool.demo.cli`
runs it all and :mod:`~django_pool.demo.report` prints and draws the results.
"""
