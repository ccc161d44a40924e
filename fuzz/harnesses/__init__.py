"""One module per fuzz target: ``INSTRUMENT`` (packages whose bytecode atheris
instruments for coverage), ``MAX_LEN`` (the longest input libFuzzer makes) and ``load()``
(imports the parser and returns the function that takes one input)."""
