"""Lab errors: kinds of the core hierarchy, so the edges map them to 422 / 404 / exit 2.

Each message names the thing that is wrong (the test code, the accession, the catalog
field) because the people who read them fix a site's order interface or a catalog file.
"""

from __future__ import annotations

from core.errors import ConfigurationError, InvalidInput


class UnknownTest(InvalidInput):
    """A test code that is not in the catalog (an order, a result, a label)."""


class CatalogError(ConfigurationError):
    """The test catalog file is not valid; the message names the file, test and field."""
