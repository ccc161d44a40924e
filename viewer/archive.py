"""One stored object's file out of Orthanc, for routes that answer with it or read it."""

from __future__ import annotations

from fastapi import HTTPException

from core.orthanc_client import OrthancClient, OrthancError
from core.settings import get_settings


def archived_file(sop_instance_uid: str, what: str) -> bytes:
    """The DICOM file of ``sop_instance_uid`` (a UID from the center's own database).

    404 naming ``what`` when Orthanc does not have it, 502 when Orthanc does not answer:
    the reader learns which of the two happened."""
    try:
        with OrthancClient.from_settings(get_settings(), retries=1) as client:
            orthanc_id = client.find_instance(sop_instance_uid)
            if orthanc_id is None:
                raise HTTPException(404, f"the {what} is not in the archive")
            return client.instance_file(orthanc_id)
    except OrthancError as e:
        raise HTTPException(502, f"the archive did not answer: {e}") from e
