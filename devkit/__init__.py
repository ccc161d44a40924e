"""Development and test scaffolding: sample studies, DCMTK drivers, loopback ports and
the throw-away ``Center`` (its Orthanc, gateway and worker processes) that the tests and
benchmarks start.

Kept out of the production packages so that the gateway, the kernel and the
reading domains ship no synthetic studies or test peers.  Only the `rdc`
command (its `demo`), model training, the tests and the benchmarks import it;
`.importlinter` checks that, and that devkit itself imports neither `rdc` nor
`viewer` (it runs them as processes).
"""
