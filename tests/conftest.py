"""Shared fixtures: tiny models are materialised once per machine in the strop cache."""

from __future__ import annotations

import pytest

from strop.hub import resolve_model


@pytest.fixture(scope="session")
def tiny_llama_dir():
    return resolve_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir():
    return resolve_model("tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2_dir():
    return resolve_model("smollm2-135m-instruct")
