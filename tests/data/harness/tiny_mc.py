"""Loads tiny_mc.jsonl from beside this file, wherever lm-eval is run from (a `data_files`
path in the YAML would be read relative to the working directory)."""

from pathlib import Path

import datasets


def load(**kwargs):
    return datasets.load_dataset("json", data_files={"test": str(Path(__file__).with_name("tiny_mc.jsonl"))})
