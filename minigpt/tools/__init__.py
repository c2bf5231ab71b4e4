"""Tools built on the library, not part of what a student reads to learn the model.

- :mod:`minigpt.tools.analysis`: capture attention weights, per-head metrics, rollout (notebook 09);
- :mod:`minigpt.tools.viz`: attention plots (needs the [viz] extra; imports analysis, never the reverse);
- :mod:`minigpt.tools.attention_report`: ``minigpt analyze-attention`` (figures + per-head metrics);
- :mod:`minigpt.tools.envcheck`: the notebooks' first-cell environment check and ``output_dir()``.
"""
