"""The one failure of a delivery attempt that both channels raise.

Its own module so that the protocol modules (:mod:`delivery.dicom_scu`,
:mod:`delivery.hl7_sender`) and the job (:mod:`delivery.tasks`) share it without importing
each other.
"""

from __future__ import annotations


class DeliveryFailed(Exception):
    """One attempt failed; the message is the precise reason, stored in ``last_error``."""
