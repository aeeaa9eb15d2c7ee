"""One adapter per architecture; `adapter_for` is the only place that looks at model_type."""

from capgap.runtime.errors import CapgapError

from .base import Adapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter

ADAPTERS = {"gpt_neox": GPTNeoXAdapter, "gpt2": GPT2Adapter, "llama": LlamaAdapter}


def adapter_for(model) -> Adapter:
    kind = model.config.model_type
    if kind not in ADAPTERS:
        raise CapgapError(f"teacher model_type={kind} has no pruning adapter (supported: {', '.join(ADAPTERS)})")
    return ADAPTERS[kind](model)
