"""cascade-defect."""
