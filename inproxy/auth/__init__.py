"""Identities: the authenticators that turn a request into an Identity."""
