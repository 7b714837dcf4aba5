"""Fixtures for the Harmony tests: openai-harmony (the oracle), loaded offline."""

import pytest


@pytest.fixture(scope="session")
def oracle(encodings_dir):
    """openai-harmony's HarmonyGptOss encoding; TIKTOKEN_ENCODINGS_BASE is set by ``encodings_dir``."""
    import openai_harmony as oh  # a test dependency: missing it is an error, not a skip

    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
