"""Old path of :mod:`minigpt.hf.data`, kept because notebook 08 of earlier course versions imports it."""

from .hf.data import group_texts, lm_datasets, load_text_splits, tokenize_splits

__all__ = ["group_texts", "load_text_splits", "lm_datasets", "tokenize_splits"]
