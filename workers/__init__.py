"""The worker side: Celery tasks (tasks.py), the runner around the backends, one module per backend (backends/).
Importing the package builds nothing; the Celery app of a worker is built by the entry module workers/celery.py
(`celery -A workers.celery worker -Q <pool>`)."""
