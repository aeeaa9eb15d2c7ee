"""Scores: equal to an independent autograd computation of MiniMA's formulation; made by
PrunerModule without moving a weight; cached so N passes serve every sparsity."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from prune_helpers import batches, score
from torch.func import functional_call

from capgap.prune.scores import baseline_scores, block_influence, magnitude_scores
from capgap.runtime.errors import CapgapError

CONF = Path(__file__).resolve().parents[1] / "conf"

# (attention output projection, FFN down projection, transposed Conv1D?) per architecture
OUT_PROJ = {
    "gpt_neox": ("gpt_neox.layers.{}.attention.dense", "gpt_neox.layers.{}.mlp.dense_4h_to_h", False),
    "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj", True),
    "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj", False),
}


def _decoder(model, ids):
    """Each architecture's pieces, called one by one: embeddings, layers, final norm, an
    attention call, a layer's two norms, and whether its block adds once (parallel residual)."""
    T = ids.shape[1]
    pos = torch.arange(T)[None]
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    kind = model.config.model_type
    if kind == "gpt2":
        m = model.transformer
        attn = lambda layer, x: layer.attn(x, attention_mask=causal)[0]
        return m.wte(ids) + m.wpe(pos), m.h, m.ln_f, attn, lambda layer: (layer.ln_1, layer.ln_2), False
    m = model.model if kind == "llama" else model.gpt_neox
    emb = (m.embed_tokens if kind == "llama" else m.embed_in)(ids)
    rope = m.rotary_emb(emb, position_ids=pos)
    call = (lambda l: l.self_attn) if kind == "llama" else (lambda l: l.attention)
    attn = lambda layer, x: call(layer)(hidden_states=x, attention_mask=causal, position_embeddings=rope)[0]
    norms = lambda layer: (layer.input_layernorm, layer.post_attention_layernorm)
    parallel = kind == "gpt_neox" and model.config.use_parallel_residual
    return emb, m.layers, m.norm if kind == "llama" else m.final_layer_norm, attn, norms, parallel


class Official(torch.nn.Module):
    """The LM loss with MiniMA's hidden mask, as modeling_sparsellama.py's decoder layer
    writes it: μ on the embeddings, on each sublayer's output and on the residual after each
    add (`after_add=False`: the placement capgap had before, sublayer outputs only)."""

    def __init__(self, model, after_add=True):
        super().__init__()
        self.model, self.after_add = model, after_add

    def forward(self, ids, labels, mu):
        emb, layers, final_norm, attn, norms, parallel = _decoder(self.model, ids)
        after = (lambda x: x * mu) if self.after_add else (lambda x: x)
        s = emb * mu
        for layer in layers:
            n1, n2 = norms(layer)
            a = attn(layer, n1(s)) * mu
            if parallel:
                s = after(s + a + layer.mlp(n2(s)) * mu)
            else:
                s = after(s + a)
                s = after(s + layer.mlp(n2(s)) * mu)
        logits = self.model.get_output_embeddings()(final_norm(s))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


def reference_scores(model, data, after_add=True):
    """E|∂L/∂mask| with no hooks and no capgap code: ξ and ν folded into the input columns of
    the output projections (MiniMA scales a head's attention probabilities and act(gate)·up:
    the same products), μ written out in Official."""
    cfg = model.config
    attn_name, ffn_name, conv = OUT_PROJ[cfg.model_type]
    params = dict(model.named_parameters())
    L_, D = cfg.num_hidden_layers, cfg.hidden_size
    G = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    F_ = params[ffn_name.format(0) + ".weight"].shape[0 if conv else 1]
    official = Official(model, after_add)
    sums = [torch.zeros(L_, G), torch.zeros(L_, F_), torch.zeros(D)]
    for batch in data:
        xi, nu, mu = (torch.ones(s.shape, requires_grad=True) for s in sums)
        new = {}
        for i in range(L_):
            for name, col in ((attn_name.format(i), None), (ffn_name.format(i), nu[i])):
                w = params[name + ".weight"]
                if col is None:
                    col = xi[i].repeat_interleave(w.shape[0 if conv else 1] // G)
                new["model." + name + ".weight"] = w * col[:, None] if conv else w * col
        loss = functional_call(official, new, (batch["input_ids"], batch["labels"], mu))
        if after_add:  # the written-out forward is the model's own at masks = 1
            assert torch.allclose(loss, model(**batch).loss, rtol=1e-5)
        for s, g in zip(sums, torch.autograd.grad(loss, (xi, nu, mu))):
            s += g.abs()
    return [s / len(data) for s in sums]


def test_score_equals_minima_formulation(tiny_model):
    data = batches(3)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    scores = score(tiny_model, data, 3)
    for key, ref in zip(("heads", "neurons", "hidden"), reference_scores(tiny_model, data)):
        assert torch.allclose(scores.raw[key], ref, rtol=1e-4, atol=1e-8), key
        # each layer's vector over its own L2 norm
        assert torch.allclose(getattr(scores, key), ref / ref.norm(dim=-1, keepdim=True), rtol=1e-4)
    # the masks after each add matter: the old placement gives other hidden scores
    old = reference_scores(tiny_model, data, after_add=False)[2]
    assert not torch.allclose(scores.raw["hidden"], old, rtol=1e-2)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())


def test_sequential_gpt_neox_scores_equal_minima_formulation():
    from conftest import tiny_gpt_neox
    torch.manual_seed(0)
    model, data = tiny_gpt_neox(use_parallel_residual=False), batches(2)
    scores = score(model, data, 2)
    for key, ref in zip(("heads", "neurons", "hidden"), reference_scores(model, data)):
        assert torch.allclose(scores.raw[key], ref, rtol=1e-4, atol=1e-8), key


@pytest.fixture(scope="module")
def local_teacher(tmp_path_factory):
    """A small local corpus and a tiny GPT-NeoX teacher saved with its BPE."""
    from conftest import tiny_gpt_neox

    from capgap.data.bpe import train_bpe
    root = tmp_path_factory.mktemp("scores")
    g = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "the", "and", "of"]
    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for i in range(40):
            text = " ".join(words[j] for j in torch.randint(0, len(words), (60,), generator=g))
            f.write(json.dumps({"text": f"doc {i}: {text}"}) + "\n")
    tok = train_bpe(OmegaConf.create({"kind": "local", "path": str(corpus), "text_key": "text",
                                      "val_fraction": 0.2, "max_tokens": None}), 200, root / "bpe")
    torch.manual_seed(0)
    teacher = tiny_gpt_neox(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    teacher.save_pretrained(root / "teacher")
    return root, corpus, teacher, tok


def test_five_sparsities_score_once(local_teacher, tmp_path):
    """The production path (student.pruned → scores_for → PrunerModule) scores a teacher once
    per (teacher, data, N): five sparsities cost N forward passes, another N costs its own."""
    from capgap.prune.student import Scoring, pruned
    root, corpus, teacher, tok = local_teacher
    passes = []
    hook = teacher.base_model.register_forward_pre_hook(lambda *a: passes.append(1))  # scoring runs the base model

    def prune_at(sparsity, n_batches):
        with initialize_config_dir(str(CONF), version_base="1.3"):
            c = compose("config", overrides=[
                f"teacher.path={root / 'teacher'}", "data=local", f"data.path={corpus}", "data.val_fraction=0.2",
                "prune=expressiveness", f"prune.sparsity={sparsity}", f"prune.n_batches={n_batches}",
                "prune.batch_size=2", "prune.block_size=16", "trainer=cpu", "trainer.enable_progress_bar=false",
                f"paths.cache_dir={tmp_path / 'cache'}", f"paths.run_dir={tmp_path / 'run'}"])
        return pruned(c.prune, c.student.size, teacher, tok, Scoring.of(c, tok))

    try:
        for p in (0.1, 0.3, 0.5, 0.6, 0.8):
            student, plan = prune_at(p, 4)
            assert student.num_parameters() < teacher.num_parameters()
        assert len(passes) == 4  # N batches, once
        assert len([e for e in (tmp_path / "cache" / "scores").iterdir() if e.is_dir() and e.name != ".locks"]) == 1  # one entry
        prune_at(0.5, 2)  # another N: another key
        assert len(passes) == 6
    finally:
        hook.remove()
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())
    with pytest.raises(CapgapError, match=r"^prune\.n_batches=0 must be at least 1$"):
        prune_at(0.5, 0)
    with pytest.raises(CapgapError, match=r"^prune\.n_batches=999 is more than the corpus gives"):
        prune_at(0.5, 999)


def test_baselines_and_block_influence(tiny_model):
    mag = magnitude_scores(tiny_model)
    rows = tiny_model.config.num_hidden_layers
    assert mag.heads.shape[0] == mag.neurons.shape[0] == rows
    assert torch.allclose(mag.neurons.norm(dim=-1), torch.ones(rows))
    bi = block_influence(tiny_model, batches(2), 2)
    assert bi.shape == (rows,) and (bi >= 0).all()
    with pytest.raises(CapgapError, match="prune.method=bogus"):
        baseline_scores(tiny_model, "bogus")
