from django.db import models


class Note(models.Model):
    name = models.CharField(max_length=100)
    written_by = models.CharField(max_length=100, default="")

    class Meta:
        app_label = "runnerapp"
