"""Decoding replies with causal LMs: settings, the chat generator, and the gated fast CPU path."""
