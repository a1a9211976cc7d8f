"""Benchmarks of caesar-rest on the production stack (RabbitMQ + Redis + PostgreSQL, local backend): `make bench`.

Each figure is printed next to a baseline measured in the same run (bare Celery, `cp`, `tar -czf`...) with
their ratio and the target for a 2-core machine; every number also goes to bench/results/<timestamp>.json."""
