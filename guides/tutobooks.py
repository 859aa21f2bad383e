"""Writes `guides/ipynb/<guide>.ipynb` from each `guides/<guide>.py`.

The `.py` guides follow keras.io's conventions (its `tutobooks` script):
a header docstring (`Title:`, `Author:`, ...), then text in triple-quoted
blocks and code between them. The notebook has:

- a header cell: the title, then the author, dates and description;
- one markdown cell per text block and one code cell per code run;
- the install cell: commented shell lines (`# !pip install ...`) become
  shell lines (`!pip install ...`), and the cell is tagged `install`, so
  Colab runs it and an offline check can leave it out.

Usage: `python guides/tutobooks.py` (all guides), or with guide paths.
`tests/examples/test_notebook.py` checks the committed notebooks are
up to date and runs one in a Jupyter kernel.
"""

import json
import pathlib
import sys

GUIDES = pathlib.Path(__file__).resolve().parent
_HEADER_FIELDS = ("Author", "Date created", "Last modified", "Description")


def _blocks(source):
    """`[(kind, text)]`: "text" for triple-quoted blocks, "code" between."""
    blocks, rest = [], source
    while '"""' in rest:
        code, _, rest = rest.partition('"""')
        text, _, rest = rest.partition('"""')
        blocks += [("code", code.strip("\n")), ("text", text.strip("\n"))]
    blocks.append(("code", rest.strip("\n")))
    return [(kind, text) for kind, text in blocks if text.strip()]


def _header(text):
    fields = dict(line.split(": ", 1) for line in text.splitlines()
                  if ": " in line)
    lines = [f"# {fields['Title']}", ""]
    lines += [f"**{name}:** {fields[name]}<br>" for name in _HEADER_FIELDS
              if name in fields]
    return "\n".join(lines).rstrip("<br>")


def _cell(kind, text):
    lines = text.splitlines(keepends=True)
    cell = {"cell_type": "markdown" if kind == "text" else "code",
            "metadata": {}, "source": lines}
    if kind == "code":
        if any(line.startswith("# !") for line in lines):
            cell["source"] = [line[2:] if line.startswith("# !") else line
                              for line in lines]
            cell["metadata"] = {"tags": ["install"]}
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook(source):
    """The notebook dict of a guide's `.py` source."""
    blocks = _blocks(source)
    cells = [_cell("text", _header(blocks[0][1]))]
    cells += [_cell(kind, text) for kind, text in blocks[1:]]
    return {
        "cells": cells,
        "metadata": {
            "accelerator": "None",
            "colab": {"name": "", "provenance": [], "toc_visible": True},
            "kernelspec": {"display_name": "Python 3", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def notebook_text(source):
    """The `.ipynb` file's text (stable: sorted keys, one indent)."""
    nb = notebook(source)
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def target(guide):
    """Where the notebook of `guide` (a `.py` path) goes."""
    guide = pathlib.Path(guide)
    return guide.parent / "ipynb" / (guide.stem + ".ipynb")


def main(paths):
    for guide in paths or sorted(GUIDES.glob("*.py")):
        guide = pathlib.Path(guide)
        if guide.name == pathlib.Path(__file__).name:
            continue
        out = target(guide)
        out.parent.mkdir(exist_ok=True)
        out.write_text(notebook_text(guide.read_text(encoding="utf-8")),
                       encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
