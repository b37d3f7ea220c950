"""Rebuild recipes/quickstart.ipynb from recipes/quickstart.py ("# %%" cells; "# %% [markdown]" cells are comments)."""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def build(source=os.path.join(HERE, "quickstart.py"), target=os.path.join(HERE, "quickstart.ipynb")):
    with open(source) as f:
        text = f.read()
    cells = []
    for chunk in text.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        if header.strip() == "[markdown]":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.strip().splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines)))
        else:
            cells.append(nbformat.v4.new_code_cell(body.strip()))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                        "language": "python"}})
    nbformat.write(nb, target)
    return target


if __name__ == "__main__":
    print(build())
