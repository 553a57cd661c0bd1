"""Replace text inside notebook cells in place, keeping cell ids and formatting (for small edits; nbpy.py round-trips
whole notebooks). Usage in Python: `replace(nb_path, old, new)`; `old` must occur exactly once in the notebook."""
import json, sys
from pathlib import Path

def replace(path, old: str, new: str) -> None:
    p = Path(path); nb = json.loads(p.read_text())
    hits = [c for c in nb["cells"] if old in "".join(c["source"])]
    n = sum("".join(c["source"]).count(old) for c in hits)
    if n != 1: raise SystemExit(f"{path}: {old!r} occurs {n} times (need exactly 1)")
    c = hits[0]; src = "".join(c["source"]).replace(old, new)
    c["source"] = src if isinstance(c["source"], str) else src.splitlines(keepends=True)   # keep the file's own form
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

def insert_after(path, anchor: str, cells) -> None:
    """Insert `cells` after the one cell whose source contains `anchor` (exactly one). Each cell is source text
    (a code cell) or a `(cell_type, source)` pair; new cells get fresh ids."""
    import uuid
    p = Path(path); nb = json.loads(p.read_text())
    hits = [i for i, c in enumerate(nb["cells"]) if anchor in "".join(c["source"])]
    if len(hits) != 1: raise SystemExit(f"{path}: anchor {anchor!r} is in {len(hits)} cells (need exactly 1)")
    new = []
    for c in cells:
        kind, src = ("code", c) if isinstance(c, str) else c
        cell = {"cell_type": kind, "id": uuid.uuid4().hex[:8], "metadata": {}, "source": src}
        if kind == "code": cell.update(execution_count=None, outputs=[])
        new.append(dict(sorted(cell.items())))           # nbdev_clean's key order, so the clean check passes
    nb["cells"][hits[0] + 1:hits[0] + 1] = new
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")

if __name__ == "__main__":
    replace(*sys.argv[1:4])
