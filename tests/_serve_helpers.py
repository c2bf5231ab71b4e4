"""A tiny random GPT + CharTokenizer to serve in tests (no checkpoint, no training)."""

from __future__ import annotations

import time

import torch

from minigpt import GPT, CharTokenizer, GPTConfig

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.:!?\n"
# with capitals: enough for the OpenAI chat template ("System:", "User:", "Assistant:")
CHAT_ALPHABET = ALPHABET + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tiny_model(seed: int = 0, block_size: int = 24, alphabet: str = ALPHABET) -> tuple[GPT, CharTokenizer]:
    tok = CharTokenizer.from_text(alphabet)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    # Larger random weights than GPT-2's init: the greedy path then wanders over many characters
    # instead of repeating one, so a wrong token shows up in the comparisons.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval(), tok


class SlowGPT(GPT):
    """A GPT that sleeps in every forward pass, so a test can act while a request is being decoded."""

    delay = 0.02

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().forward(*args, **kwargs)


def slow_model(seed: int = 0, alphabet: str = ALPHABET) -> tuple[SlowGPT, CharTokenizer]:
    model, tok = tiny_model(seed, alphabet=alphabet)
    slow = SlowGPT(model.config)
    slow.load_state_dict(model.state_dict())
    return slow.eval(), tok


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition()`` for at most ``timeout`` seconds (bounded: a hang fails the test instead)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
