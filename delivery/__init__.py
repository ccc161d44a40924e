"""Outbound: signed results go back to the sending sites (DICOM with storage
commitment, HL7 v2 over MLLP), with retries that survive restarts."""
