"""``path("pool/", include("django_pool.contrib.urls"))`` serves :func:`~.views.pool_stats`.

The view is protected: see :mod:`django_pool.contrib.views` for the two ways in.
"""

from django.urls import path

from .views import pool_stats

urlpatterns = [path("", pool_stats, name="django_pool_stats")]
