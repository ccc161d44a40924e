"""One error hierarchy for the core; each error knows how the edges report it."""

from __future__ import annotations


class RDCError(Exception):
    """Base of every error the center raises on purpose.

    ``http_status`` is used by the web edge; ``exit_code`` by the CLI.
    """

    http_status = 500
    exit_code = 1


class ConfigurationError(RDCError):
    """The center is configured in a way it cannot run with."""

    exit_code = 2


class Forbidden(RDCError):
    """The caller is known but may not do this (another reader's key, a wrong role)."""

    http_status = 403
    exit_code = 6


class NotFound(RDCError):
    http_status = 404
    exit_code = 3


class Conflict(RDCError):
    http_status = 409
    exit_code = 4


class InvalidInput(RDCError):
    http_status = 422
    exit_code = 2


class InvalidTransition(Conflict):
    """A state machine was asked for a move it does not allow."""
