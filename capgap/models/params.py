"""One way to count parameters, for every teacher and student alike."""

from torch import nn


def count_params(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameter counts.

    Non-embedding excludes the token embedding, learned position embeddings and an untied
    LM head (Kaplan et al.'s convention); a tied head is one tensor and is counted once.
    Shared tensors are counted once, so tied embeddings are not double counted.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = 0
    embedding_ids: set[int] = set()
    modules = [model.get_input_embeddings()] if hasattr(model, "get_input_embeddings") else []
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        modules.append(model.get_output_embeddings())
    # learned absolute positions (GPT-2's wpe) are embeddings too
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith(("wpe", "embed_positions")):
            modules.append(module)
    for module in modules:
        for p in module.parameters():
            if id(p) not in embedding_ids:
                embedding_ids.add(id(p))
                embedding += p.numel()
    return {"total": total, "non_embedding": total - embedding}
