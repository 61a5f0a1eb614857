"""The production job (`launch/correct.py`, `lancet-ds job run|validate`): job file, validation, run
lock, manifest, the stage sequence with skip/resume, the JSON-lines log."""
