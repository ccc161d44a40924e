"""Coverage-guided fuzzers (atheris / libFuzzer) for every parser that reads outside input.

Each harness in :mod:`fuzz.harnesses` feeds bytes to one parser exactly as the center
calls it and lets only that parser's documented refusal through; anything else (another
exception, a hang past the per-input time limit, memory past the RSS limit, a partial
spool file) is a finding that libFuzzer saves as ``crash-*``, ``timeout-*`` or ``oom-*``.

    python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]   one target, by hand
    python -m fuzz.campaign --runs 1000000                       every target, long
    pytest tests/test_fuzz.py                                    every target, bounded

Seed corpora live in ``fuzz/corpus/<target>/`` and are made by ``python -m fuzz.seeds``
from real inputs (pydicom's test files, the center's own writers, the shared PhysioNet
records); inputs that once crashed a parser are kept there as regression seeds.
"""
