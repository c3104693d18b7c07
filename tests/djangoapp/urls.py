from django.urls import include, path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("async-items", views.async_items),
    path("stats", views.stats),
    path("pool/", include("django_pool.contrib.urls")),
]
