"""Shared test set-up.

Tests run single-threaded by default: the models are tiny, and OpenMP threads that spin-wait are
many times slower when another process holds the other core (set MINIGPT_TEST_THREADS to change).
"""

import os

import torch

torch.set_num_threads(int(os.environ.get("MINIGPT_TEST_THREADS", "1")))
