"""cascade-defect: few-shot multimodal-LLM labels for steel-surface defect detection, and their cost.

Generic pieces live in ``data``, ``annotate``, ``metrics``, ``train``, ``costs``, ``storage`` and
``plots``; ``chapters`` composes them into the book's chapters (see ARCHITECTURE.md).
"""
