"""Names the workflow, the library and the report share."""

FP = "fp"  # the FP baseline's name in every file and table; no variant may take it
