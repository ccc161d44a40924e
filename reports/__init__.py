"""Reports and signing, shared by every reading domain (images, ECG, slides, lab).

- :mod:`reports.document`: the frozen, rendered form of one report version.
- :mod:`core.crypto`, :mod:`core.pki`, :mod:`reports.envelope`:
  algorithms (SM2/SM3, Ed25519, ECDSA P-256), the center's CA and reader
  certificates, and the signature envelope that travels inside delivered files.
- :mod:`reports.sr`, :mod:`reports.pdf`, :mod:`reports.hl7`,
  :mod:`reports.fhir`: the outputs of a signed version.
- :mod:`reports.service`: the state machine and signing flow over the database.
- :mod:`reports.templates`: the versioned report templates (TOML).
- :mod:`reports.registry`: what reading domains contribute (prefill, template folders,
  PDF figures), declared from their ``plugin.register()``; reports import no domain.
"""
