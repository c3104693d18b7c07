"""The demo's Django project: one model, and the pages each scenario loads.

Its settings come from environment variables that ``django-pool demo`` sets for
each server it starts (see :func:`django_pool.demo.modes.environment`), so the
same code runs under every connection mode. To serve it by hand::

    DJANGO_POOL_DEMO_MODE=django_pool DJANGO_POOL_DEMO_POOL='{"min_size": 2, "max_size": 8}' \\
    DJANGO_POOL_DEMO_DATABASE=postgres://postgres@127.0.0.1:5432/django_pool_demo \\
    DJANGO_POOL_DEMO_APPLICATION_NAME=demo \\
    gunicorn -k gthread --threads 8 django_pool.demo.project.wsgi
"""
