"""Core package of the California housing MLOps pipeline; the stage scripts at the project root are thin
command lines over it. One subpackage per stage or concern (docs/layout.md is the map): ``data``,
``training``, ``registry``, ``serving``, ``store``, ``monitoring`` and ``api``; the settings, the feature
contract, user errors and the stage scripts' plumbing at the top. Importing any module does no work: no data
is read, no model loaded, no tracking URI set.
"""
