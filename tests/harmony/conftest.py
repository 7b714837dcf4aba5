"""Fixtures for the Harmony tests: openai-harmony (the oracle), loaded offline."""

import pytest


@pytest.fixture(scope="session")
def oracle(encodings_dir):
    """openai-harmony's HarmonyGptOss encoding; TIKTOKEN_ENCODINGS_BASE is set by ``encodings_dir``."""
    oh = pytest.importorskip("openai_harmony")
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
