"""Scores: equal to an independent autograd computation; cached so N passes serve every sparsity."""

import lightning as L
import pytest
import torch
from torch.func import functional_call
from torch.utils.data import DataLoader

from capgap.errors import CapgapError
from capgap.prune.plan import make_plan
from capgap.prune.pruner_module import PrunerModule
from capgap.prune.scores import block_influence, cache_path, expressiveness, get_scores, magnitude_scores
from capgap.prune.slicing import slice_model
from prune_helpers import batches

# (attention output projection, FFN down projection, transposed Conv1D?) per architecture
OUT_PROJ = {
    "gpt_neox": ("gpt_neox.layers.{}.attention.dense", "gpt_neox.layers.{}.mlp.dense_4h_to_h", False),
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj", True),
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj", False),
}


def reference_scores(model, data):
    """E|∂L/∂mask| by folding the masks into weights: no hooks, no capgap code.

    ξ and ν scale input columns of the output projections, μ their output rows and bias
    and the embeddings (passed as inputs_embeds so a tied LM head stays unscaled).
    """
    cfg = model.config
    attn_name, ffn_name, conv = OUT_PROJ[cfg.model_type]
    params = dict(model.named_parameters())
    L_, D = cfg.num_hidden_layers, cfg.hidden_size
    G = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    F = params[ffn_name.format(0) + ".weight"].shape[0 if conv else 1]
    sums = [torch.zeros(L_, G), torch.zeros(L_, F), torch.zeros(D)]
    for batch in data:
        xi, nu, mu = (torch.ones(s.shape, requires_grad=True) for s in sums)
        new = {}
        for i in range(L_):
            for name, in_mask in ((attn_name.format(i), None), (ffn_name.format(i), nu[i])):
                w = params[name + ".weight"]
                n_in = w.shape[0 if conv else 1]
                col = xi[i].repeat_interleave(n_in // G) if in_mask is None else in_mask
                new[name + ".weight"] = w * col[:, None] * mu if conv else w * mu[:, None] * col
                if name + ".bias" in params:
                    new[name + ".bias"] = params[name + ".bias"] * mu
        if cfg.model_type == "gpt2":
            new["transformer.wpe.weight"] = params["transformer.wpe.weight"] * mu
        embeds = model.get_input_embeddings()(batch["input_ids"]) * mu
        loss = functional_call(model, new, (), {"inputs_embeds": embeds, "labels": batch["labels"]}).loss
        for s, g in zip(sums, torch.autograd.grad(loss, (xi, nu, mu))):
            s += g.abs()
    return [s / len(data) for s in sums]


def test_score_equals_independent_autograd(tiny_model):
    data = batches(3)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    scores = expressiveness(tiny_model, data, 3)
    for key, ref in zip(("heads", "neurons", "hidden"), reference_scores(tiny_model, data)):
        assert torch.allclose(scores.raw[key], ref, rtol=1e-4, atol=1e-8), key
        # each layer's vector over its own L2 norm
        assert torch.allclose(getattr(scores, key), ref / ref.norm(dim=-1, keepdim=True), rtol=1e-4)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())


def test_five_sparsities_score_once(tiny_model):
    passes = []
    tiny_model.base_model.register_forward_pre_hook(lambda *a: passes.append(1))  # scoring runs the base model
    data = batches(4)
    for p in (0.1, 0.3, 0.5, 0.6, 0.8):
        scores = get_scores(tiny_model, data, teacher_id="tiny", data_id="d0", n_batches=4)
        slice_model(tiny_model, make_plan(tiny_model, scores, sparsity=p))
    assert len(passes) == 4  # N batches, once
    assert cache_path("tiny", "d0", 4).is_file()
    get_scores(tiny_model, data, teacher_id="tiny", data_id="d0", n_batches=2)  # another N: another key
    assert len(passes) == 6


def test_pruner_module_matches_plain_function(tmp_path):
    from conftest import tiny_llama
    torch.manual_seed(0)
    model, data = tiny_llama(), batches(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = PrunerModule(model, n_batches=3, cache_path=tmp_path / "s.pt")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=None))
    plain = expressiveness(model, data, 3)
    for key in ("heads", "neurons", "hidden"):
        assert torch.allclose(getattr(module.scores, key), getattr(plain, key), rtol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())
    assert (tmp_path / "s.pt").is_file()


def test_baselines_and_block_influence(tiny_model):
    mag = magnitude_scores(tiny_model)
    rows = tiny_model.config.num_hidden_layers
    assert mag.heads.shape[0] == mag.neurons.shape[0] == rows
    assert torch.allclose(mag.neurons.norm(dim=-1), torch.ones(rows))
    bi = block_influence(tiny_model, batches(2), 2)
    assert bi.shape == (rows,) and (bi >= 0).all()
    with pytest.raises(CapgapError, match="prune.method=bogus"):
        get_scores(tiny_model, method="bogus")
    with pytest.raises(CapgapError, match="prune.n_batches=5"):
        expressiveness(tiny_model, batches(2), 5)
