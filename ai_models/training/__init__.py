"""How the shipped demonstration models were made: torch training on phantoms and
simulated ECGs, ONNX export with a parity check, and ``rdc models export``.

None of it runs in the center: the AI runtime (registry, manifest, runtime,
pipelines, DICOM outputs, jobs) loads ONNX files and never imports this package
(an import-linter contract keeps it so). Only ``rdc``, the tests and the
benchmarks import it.
"""
