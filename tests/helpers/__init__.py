"""Test helpers: tiny models, token data, reference implementations."""
