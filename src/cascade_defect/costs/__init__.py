"""The study's economics as pure functions over token counts and prices: packaged prices, the
annotation cost model, sweeps, published reference costs and the YOLO-to-annotator cascade.
"""
