"""The dataset as records: ingest from the layouts people have (Pascal VOC, YOLO txt, class folders),
the data card, the seeded seed/pool/test split and its on-disk layout, and the optional download.
"""
