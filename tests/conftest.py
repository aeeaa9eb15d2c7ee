"""Tiny random models of each supported architecture, built from configs (no download)."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 96

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning
# threads per process made training several times slower
torch.set_num_threads(1)


def tiny_gpt_neox(**kw):
    cfg = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**cfg)).eval()


def tiny_gpt2(**kw):
    cfg = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
               bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def tiny_llama(**kw):
    """LLaMA with grouped-query attention and tied embeddings, as SmolLM2."""
    cfg = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
               num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


TINY = {"gpt_neox": tiny_gpt_neox, "gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(params=sorted(TINY))
def tiny_model(request):
    torch.manual_seed(0)
    return TINY[request.param]()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own capgap cache so nothing leaks between tests or from the user."""
    monkeypatch.setenv("CAPGAP_CACHE", str(tmp_path_factory.mktemp("capgap_cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (tests marked `postgres`)."""
    from postgres_server import Server, binaries

    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's "
                    "postgresql package (.ci/run does)")
    server = Server(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.new_database()


@pytest.fixture(autouse=True, scope="session")
def checkout_stays_clean():
    """Tests write into temporary folders only: a job started in the checkout without
    hydra.run.dir would leave outputs/ or multirun/ there (the soak test once did)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    before = {p for p in ("outputs", "multirun") if (root / p).exists()}
    yield
    after = {p for p in ("outputs", "multirun") if (root / p).exists()}
    assert after <= before, f"the tests wrote {sorted(after - before)} into the checkout {root}"
