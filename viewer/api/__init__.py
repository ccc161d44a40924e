"""The web app's HTTP routers, thin by rule: each validates its input (the schemas in
:mod:`viewer.schemas`), takes what it needs from :mod:`viewer.deps`, calls a service
and returns a schema.  No SQL here: the import-linter contract "viewer routers run no
SQL" (``.importlinter``) forbids ``sqlalchemy`` and ``core.models`` in this package."""
