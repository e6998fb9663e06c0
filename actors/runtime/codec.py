"""The bus codec (`runner_template.codec`), where the actors have always found it."""

from __future__ import annotations

from runner_template.codec import decode, decoder_for, encode, encoder

__all__ = ["decode", "decoder_for", "encode", "encoder"]
