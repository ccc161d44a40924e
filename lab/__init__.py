"""Laboratory results: samples, chain of custody, HL7 v2, QC and autoverification."""
