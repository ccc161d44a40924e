"""Shared core of the regional diagnostic center.

Thin on purpose: settings, database and migrations, domain models and their
state machines, audit log, site registry, Orthanc client, Celery app.  Domain
packages depend on it; it depends on none of them.
"""
