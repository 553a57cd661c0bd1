"""Authoring aid: convert between an nbdev notebook and a percent-format script.

    python tools/nbpy.py to-nb  script.py  nbs/05_x.ipynb   # cells split on '# %%' / '# %% [markdown]'
    python tools/nbpy.py to-py  nbs/05_x.ipynb script.py

The notebook stays the source of truth; the script is a scratch copy for editing in a text
editor. Markdown cells are written as '# %% [markdown]' followed by lines prefixed with '# '.
Cell tags survive as '# %% tags=["parameters"]'. Outputs are never written.
"""
import hashlib, json, re, sys
from pathlib import Path
import nbformat

_HDR = re.compile(r'^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$')

def py_to_nb(src: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}
    cells, cur = [], None
    for line in src.splitlines():
        m = _HDR.match(line)
        if m:
            cur = {"md": bool(m['md']), "tags": json.loads(m['tags']) if m['tags'] else [], "lines": []}
            cells.append(cur)
        elif cur is not None: cur["lines"].append(line)
    for c in cells:
        lines = c["lines"]
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if c["md"]:
            text = "\n".join(l[2:] if l.startswith('# ') else l.lstrip('#') for l in lines)
            cell = nbformat.v4.new_markdown_cell(text)
        else: cell = nbformat.v4.new_code_cell("\n".join(lines))
        # deterministic ids: re-converting unchanged cells gives the same ids (no churn in exports)
        cell["id"] = hashlib.sha1(f"{len(nb.cells)}:{cell.source}".encode()).hexdigest()[:8]
        if c["tags"]: cell.metadata["tags"] = c["tags"]
        nb.cells.append(cell)
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb

def nb_to_py(nb) -> str:
    out = []
    for c in nb.cells:
        tags = c.get("metadata", {}).get("tags")
        t = f" tags={json.dumps(tags)}" if tags else ""
        if c.cell_type == "markdown":
            out.append(f"# %% [markdown]{t}")
            out += [("# " + l) if l else "#" for l in c.source.splitlines()]
        else:
            out.append(f"# %%{t}"); out += c.source.splitlines()
        out.append("")
    return "\n".join(out)

if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    if cmd == "to-nb":
        nb = py_to_nb(Path(a).read_text())
        Path(b).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        try:  # write it the way nbdev_clean would, so the committed file passes the clean check
            from nbdev.clean import nbdev_clean
            nbdev_clean(fname=b)
        except ImportError: pass
    elif cmd == "to-py": Path(b).write_text(nb_to_py(nbformat.read(a, as_version=4)))
    else: sys.exit(f"unknown command {cmd!r}: use to-nb or to-py")
