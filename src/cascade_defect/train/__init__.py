"""Model training and inference: the label sources a detector may learn from, YOLOv8n detection and
YOLOv8n-cls fine-tuning, scoring on the golden test set, latency, and running ultralytics offline.
"""
