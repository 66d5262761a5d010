"""The two simulated cloud providers the cloud tests share: their model names and size.

`alpha` serves PRIMARY and `beta` serves FALLBACK (fixtures in tests/conftest.py), each
answering TOKENS tokens.
"""

PRIMARY, FALLBACK, TOKENS = "gpt-sim", "chat-sim", 4
