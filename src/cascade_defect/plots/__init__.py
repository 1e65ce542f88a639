"""What the chapters show, one module per chapter theme.

Figures take a table and return a matplotlib Figure; the display tables beside them take a table
and return a smaller or reshaped one. Both keep the notebooks to parameters, package calls and
prose, and let the numbers be tested without drawing anything.
"""
