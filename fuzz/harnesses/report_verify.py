"""``reports.verify.verify_bytes``: what ``rdc reports verify`` runs on a delivered
SR, sealed PDF or DICOM-wrapped PDF.

The trust anchor is the test CA that signed the seeds (``fuzz/data/report-ca.pem``, made
by ``python -m fuzz.seeds``), so that mutations of real signed files get as far as the
signature check.  Refusal: :class:`~core.errors.RDCError` (``InvalidInput`` and
``SignatureInvalid``), which the command prints as FAILED with exit code 5; anything else
would end it with a traceback.  An input that verifies must be one of the seeds' sealed
contents: a mutation that still verifies is a forged report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

INSTRUMENT = ("reports", "pydicom", "asn1crypto")
MAX_LEN = 160 * 1024
CA_PEM = Path(__file__).resolve().parents[1] / "data" / "report-ca.pem"


def load() -> Callable[[bytes], None]:
    from core.errors import RDCError
    from reports.verify import verify_bytes

    ca = CA_PEM.read_bytes()
    #: Content hashes of the seeds' sealed reports: the only ones that may verify.
    genuine = {line.strip() for line in
               (CA_PEM.parent / "report-hashes.txt").read_text().splitlines() if line.strip()}

    def one_input(data: bytes) -> None:
        try:
            result = verify_bytes(data, ca)
        except RDCError:
            return
        if result.result.content_hash not in genuine:
            raise AssertionError(f"a changed report verified: {result.result.content_hash}")

    return one_input
