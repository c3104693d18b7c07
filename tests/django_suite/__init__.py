"""Django's own test suite, run through django-pool's backends and through Django's.

See :mod:`tests.django_suite.compare`; ``nox -s django_suite`` runs it.
"""
