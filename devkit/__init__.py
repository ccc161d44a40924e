"""Development and test scaffolding: sample studies and DCMTK drivers.

Kept out of the production packages so that the gateway, the kernel and the
reading domains ship no synthetic studies or test peers.  Only the `rdc`
command (its `demo`), model training, the tests and the benchmarks import it;
`.importlinter` checks that, and that devkit itself imports neither `rdc` nor
`viewer`.
"""
