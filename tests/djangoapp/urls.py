from django.urls import include, path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("async-items", views.async_items),
    path("stats", views.stats),
    path("awaits", views.awaits),
    path("leak-thread", views.leak_thread),
    path("leak-gather", views.leak_gather),
    path("leak-task", views.leak_task),
    path("pool/", include("django_pool.contrib.urls")),
]
