"""Tools built on the library, not part of what a student reads: command-line reports.

- :mod:`minigpt.tools.attention_report`: ``minigpt analyze-attention`` (figures + per-head metrics).
"""
