# Vendored unchanged (but for this header) from Django 5.2.19: tests/cache/models.py of
# https://github.com/django/django at tag 5.2.19, taken from the release's source
# distribution https://pypi.org/project/Django/5.2.19/ (django-5.2.19.tar.gz, sha256
# ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1). Django is
# BSD-3-Clause licensed (Copyright (c) Django Software Foundation and individual
# contributors). See python/README-frameworks.md.
from django.db import models
from django.utils import timezone


def expensive_calculation():
    expensive_calculation.num_runs += 1
    return timezone.now()


class Poll(models.Model):
    question = models.CharField(max_length=200)
    answer = models.CharField(max_length=200)
    pub_date = models.DateTimeField("date published", default=expensive_calculation)
