"""An adapter records its base as the absolute dir strop materialised it in; when that cache
moved (STROP_CACHE changed, the cache emptied), the known model behind the dir name is
rebuilt in the current cache instead of failing."""

from __future__ import annotations

import pytest

from strop.errors import StropError
from strop.hub import CACHE_VERSION, resolve_model


def test_a_vanished_cache_dir_of_a_known_model_resolves_to_the_current_one(tmp_path):
    gone = tmp_path / "old-cache" / "models" / f"tiny-llama-{CACHE_VERSION}"
    assert resolve_model(gone) == resolve_model("tiny-llama")
    for other in (
        tmp_path / "old-cache" / "models" / f"no-such-model-{CACHE_VERSION}",
        tmp_path / "old-cache" / "elsewhere" / f"tiny-llama-{CACHE_VERSION}",
        tmp_path / "old-cache" / "models" / "tiny-llama-v0",
    ):
        with pytest.raises(StropError, match="unknown model"):
            resolve_model(other)
