from django.urls import path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("async-items", views.async_items),
    path("stats", views.stats),
]
