"""A tiny Django project run by ``tests/test_django_processes.py`` in subprocesses.

It is driven through Django's own test runner (``python -m django test``) and
through short scripts (``python -m tests.runner_project.<script>``), never
imported by the pytest session itself.
"""
