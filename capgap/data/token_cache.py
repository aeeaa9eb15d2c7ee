"""Tokenize a corpus once into two flat token streams on disk (train, validation).

The split is by document, decided by a hash of the document's text, so it is the same on
every run and machine, and no document straddles train and validation. Block size is not
part of the key: blocks are views over the stream, so a new block size does not retokenize.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from capgap.data import sources
from capgap.runtime.atomic import build_once
from capgap.runtime.errors import CapgapError
from capgap.runtime.terminal import announce, keep_title

BATCH_DOCS = 256


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{text}|eos={tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def is_validation(doc: str, val_fraction: float) -> bool:
    digest = hashlib.blake2b(doc.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def cache_key(tokenizer, data_cfg) -> str:
    parts = [tokenizer_fingerprint(tokenizer), sources.source_id(data_cfg),
             f"val={data_cfg.val_fraction}", f"max={data_cfg.get('max_tokens')}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def build(tokenizer, data_cfg, cache_dir: str | Path) -> tuple[Path, bool]:
    """Return the cache folder and whether this call had to tokenize."""
    if tokenizer.eos_token_id is None:
        raise CapgapError("the tokenizer has no EOS token; documents cannot be separated")
    out = Path(cache_dir) / "tokens" / cache_key(tokenizer, data_cfg)
    with keep_title():  # called from inside a fit: its bar is still pretraining's, distilling's...
        return out, build_once(out, lambda tmp: _tokenize(tokenizer, data_cfg, tmp))


def _tokenize(tokenizer, data_cfg, tmp: Path) -> None:
    """Write train.bin, val.bin and meta.json into `tmp`."""
    where = data_cfg.get("path") or data_cfg.get("name") or data_cfg.kind
    announce("tokenizing", f"{where} with a {len(tokenizer):,}-token vocabulary (once; cached)")
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    max_tokens = data_cfg.get("max_tokens")
    with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
        files = {"train": ftrain, "val": fval}
        batch: list[str] = []
        bar = tqdm(desc="tokenizing", unit="doc", dynamic_ncols=True, disable=None)  # None: no bar in logs

        def flush():
            encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
            for doc, ids in zip(batch, encoded):
                split = "val" if is_validation(doc, data_cfg.val_fraction) else "train"
                files[split].write(np.asarray(ids + [tokenizer.eos_token_id], dtype=dtype).tobytes())
                counts[split] += len(ids) + 1
                docs[split] += 1
            bar.update(len(batch))
            bar.set_postfix(tokens=counts["train"] + counts["val"])
            batch.clear()

        for doc in sources.documents(data_cfg):
            if doc and doc.strip():
                batch.append(doc)
            if len(batch) >= BATCH_DOCS:
                flush()
                if max_tokens and counts["train"] + counts["val"] >= max_tokens:
                    break
        if batch:
            flush()
        bar.close()
    if counts["train"] + counts["val"] == 0:
        raise CapgapError(f"data.path={where}: empty corpus, no text to tokenize")
    if counts["val"] == 0 or counts["train"] == 0:
        raise CapgapError(
            f"data.path={where}: {docs['train'] + docs['val']} document(s) cannot be split "
            f"into train and validation with data.val_fraction={data_cfg.val_fraction}; "
            "give more documents or change the fraction")
    meta = {"dtype": np.dtype(dtype).name, "eos_token_id": tokenizer.eos_token_id,
            "tokens": counts, "documents": docs, "source": sources.source_id(data_cfg),
            "tokenizer": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def load(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        streams = {s: np.memmap(folder / f"{s}.bin", dtype=meta["dtype"], mode="r")
                   for s in ("train", "val")}
    except (OSError, ValueError, KeyError) as e:
        raise CapgapError(f"token cache {folder} is corrupt ({e}); delete it to rebuild") from None
    for split, stream in streams.items():
        if len(stream) != meta["tokens"][split]:
            raise CapgapError(f"token cache {folder}/{split}.bin is truncated; delete the folder to rebuild")
    return meta, streams
