"""Core package of the California housing MLOps pipeline.

One module per concern; the stage scripts at the project root are thin command lines over it.
Importing any module here does no work: no data is read, no model loaded, no tracking URI set.
"""
