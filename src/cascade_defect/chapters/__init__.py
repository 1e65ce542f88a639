"""One module per book chapter (``cNN_*``): its ``*Outputs`` file layout and its ``run_*`` function.

Chapters compose the generic subpackages and hand over to each other only through the files they
write, each with a manifest; nothing outside this package imports it.
"""
