"""Reports and signing, shared by every reading domain (images, ECG, slides, lab).

- :mod:`core.reports.document`: the frozen, rendered form of one report version.
- :mod:`core.reports.crypto`, :mod:`core.reports.pki`, :mod:`core.reports.envelope`:
  algorithms (SM2/SM3, Ed25519, ECDSA P-256), the center's CA and reader
  certificates, and the signature envelope that travels inside delivered files.
- :mod:`core.reports.sr`, :mod:`core.reports.pdf`, :mod:`core.reports.hl7`,
  :mod:`core.reports.fhir`: the outputs of a signed version.
- :mod:`core.reports.service`: the state machine and signing flow over the database.
"""
