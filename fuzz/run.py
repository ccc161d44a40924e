"""Run one fuzz target under atheris (libFuzzer):

    python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]

The target's packages are imported under atheris' instrumentation, so libFuzzer is
guided by the Python branches they take.  ``-max_len`` defaults to the harness'
``MAX_LEN``; every other flag and the corpus folders go to libFuzzer as given (the
first folder receives new inputs, so pass a scratch folder before the committed
``fuzz/corpus/TARGET``).
"""

from __future__ import annotations

import logging
import sys
import warnings

import atheris

from fuzz.targets import harness


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit("usage: python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]")
    module = harness(argv[1])
    # pydicom warns and logs about every odd value; the fuzzer makes millions of them.
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    with atheris.instrument_imports(include=list(module.INSTRUMENT)):
        one_input = module.load()
    flags = argv[2:]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={module.MAX_LEN}")
    atheris.Setup([f"{argv[0]}:{argv[1]}", *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
