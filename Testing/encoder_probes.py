"""Probes on SAM2's image encoder for tests of background encoding: counts of calls (forward
hooks on SAM2's own modules) and an encoding held at its first Hiera block until released."""

from __future__ import annotations

import threading

import pytest


class EncoderCounter:
    """Counts image-encoder calls begun and finished, Hiera blocks begun and their attentions
    finished, through hooks."""

    def __init__(self, model) -> None:
        self.begun = self.finished = self.blocks = self.attentions = 0
        enc = model.image_encoder
        self._handles = [
            enc.register_forward_pre_hook(lambda *_: self._add("begun")),
            enc.register_forward_hook(lambda *_: self._add("finished")),
        ] + [b.register_forward_pre_hook(lambda *_: self._add("blocks")) for b in enc.trunk.blocks
             ] + [b.attn.register_forward_hook(lambda *_: self._add("attentions"))
                  for b in enc.trunk.blocks]

    def _add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture
def held_encoding(engine):
    """``started``/``release`` events: the next encoding waits at its first block until released."""
    started, release = threading.Event(), threading.Event()

    def hold(_module, _args):
        if not started.is_set():
            started.set()
            release.wait(60)

    handle = engine.model.image_encoder.trunk.blocks[0].register_forward_pre_hook(hold)
    yield started, release
    release.set()
    handle.remove()
