"""Prose names only things that exist: the markdown of every notebook in nbs/ (library, experiments, explore)
and README.md may name a `clvq_nb` object (backticked `name(...)`, `clvq_nb.module.name`, `Class.attribute` or
`Class.method(...)` of a clvq_nb class, a backticked snake_case or CamelCase identifier) or a `clvq <command>` only
when the package has it. nbs/index.ipynb lists every notebook and every command."""
import builtins, importlib, inspect, json, pkgutil, re
from functools import cache
from pathlib import Path

import pytest

import clvq_nb

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def cli_subcommands() -> set[str]:
    "The `clvq` subcommands (the keys of `clvq_nb.cli.COMMANDS`, which tyro turns into subcommands); adapt here when the CLI changes."
    from clvq_nb.cli import COMMANDS
    return set(COMMANDS)


# Commands the prose may already name before the CLI has them (remove each once `cli_subcommands()` has it).
PENDING_COMMANDS: dict[str, str] = {}   # e.g. {"notebooks": "clvq notebooks DIR (issue 11 item 7), wired by the CLI rewrite"}
# Mathematical notation written like a call in prose, not an API name.
MATH = {"MSE", "exp", "log", "softmax", "argmin", "argmax", "max", "min"}
# Names of other projects the prose refers to.
EXTERNAL = {"VectorQuantize": "vector-quantize-pytorch", "FigureWidget": "plotly", "nbdev_export": "nbdev"}
# Stale names in files this test's author may not edit: tolerated until fixed, then this entry must go (it fails).
TO_FIX: set[tuple[str, str]] = set()   # e.g. {("nbs/10_pipeline.ipynb", "run_experiment")}


def markdown_docs() -> list[tuple[str, str]]:
    "(where, text) for every markdown cell of every notebook under nbs/ and for README.md."
    out = []
    for p in sorted(NBS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in p.parts: continue
        for i, c in enumerate(json.loads(p.read_text())["cells"]):
            if c["cell_type"] == "markdown": out.append((f"{p.relative_to(ROOT)} cell {i}", "".join(c["source"])))
    out.append(("README.md", (ROOT / "README.md").read_text()))
    return out


@cache
def notebook_parameters() -> set[str]:
    "Papermill parameters of the experiment and explore notebooks (their `parameters` cells)."
    import papermill as pm
    return {k for d in ("experiments", "explore") for p in (NBS / d).glob("*.ipynb") for k in pm.inspect_notebook(str(p))}


@cache
def package() -> tuple[dict, str]:
    "Every name the package defines or imports (module attributes and class attributes), and its source text."
    names: dict[str, object] = {}
    src = []
    for m in pkgutil.iter_modules(clvq_nb.__path__):
        mod = importlib.import_module(f"clvq_nb.{m.name}")
        src.append(Path(mod.__file__).read_text())
        for k, v in vars(mod).items():
            names.setdefault(k, v)
            if inspect.isclass(v) and v.__module__.startswith("clvq_nb"):   # its own and its clvq_nb bases' attributes
                for c in v.__mro__:
                    if c.__module__.startswith("clvq_nb"):
                        for a, x in vars(c).items(): names.setdefault(a, x)
    return names, "\n".join(src)


@cache
def exists(name: str) -> bool:
    "A name the package defines, imports or uses in its code (e.g. an external API it calls), or a builtin."
    names, src = package()
    if name in EXTERNAL or name in notebook_parameters(): return True
    return name in names or hasattr(builtins, name) or re.search(rf"\b{re.escape(name)}\b", src) is not None


def ours(obj) -> bool:
    "A class defined in clvq_nb."
    return inspect.isclass(obj) and obj.__module__.startswith("clvq_nb")


def class_has(cls: type, attr: str) -> bool:
    "`cls` (or a base) has `attr`: a method, property, class attribute, dataclass field, or an attribute its code sets on self."
    if hasattr(cls, attr) or attr in getattr(cls, "__dataclass_fields__", {}): return True
    return re.search(rf"\bself\.{re.escape(attr)}\s*(?::[^=\n]+)?=[^=]", package()[1]) is not None


def resolves(dotted: str) -> bool:
    "`clvq_nb.module.attr...` imports and resolves attribute by attribute."
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try: obj = importlib.import_module(".".join(parts[:i]))
        except ImportError: continue
        try:
            for a in parts[i:]: obj = getattr(obj, a)
            return True
        except AttributeError: return False
    return False


CODE = re.compile(r"`([^`\n]+)`")
CALL = re.compile(r"^([A-Za-z_]\w*)(?:\.(\w+))?\(")
ATTR = re.compile(r"^([A-Z]\w*)\.(\w+)$")         # `Class.attribute`
IDENT = re.compile(r"^(?:[a-z]+(?:_[a-z0-9]+)+|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+)$")   # snake_case with a _, or CamelCase
COMMAND = re.compile(r"\bclvq ([a-z][\w-]*)")
FENCE = re.compile(r"```.*?```", re.S)


def problems(where: str, text: str, commands: set[str]) -> list[str]:
    "What `text` names that does not exist."
    bad = []
    spans = CODE.findall(FENCE.sub("", text))
    for s in spans:
        s = s.strip()
        for q in re.findall(r"\bclvq_nb(?:\.\w+)+", s):
            if not resolves(q): bad.append(f"{where}: `{q}` does not exist")
        m, a = CALL.match(s), ATTR.match(s)
        if m and not s.startswith("clvq_nb."):
            head, attr = m.groups()
            cls = package()[0].get(head)
            if attr and ours(cls):   # `Class.method(...)` of a clvq_nb class: the class must have it
                if not class_has(cls, attr): bad.append(f"{where}: `{s}`: {head} has no {attr!r}")
                continue
            # `obj.method(...)`: only checked when obj is a class the package uses; torch.x(, np.x(, cache.x( are not ours
            name = attr if attr and inspect.isclass(cls) else (None if attr else head)
            if name and name not in MATH and not exists(name): bad.append(f"{where}: `{s}` names {name!r}, which does not exist")
        elif a and ours(package()[0].get(a[1])):
            if not class_has(package()[0][a[1]], a[2]): bad.append(f"{where}: `{s}`: {a[1]} has no {a[2]!r}")
        elif IDENT.match(s) and not exists(s):
            bad.append(f"{where}: `{s}` does not exist in clvq_nb")
    for c in COMMAND.findall("\n".join(spans + FENCE.findall(text))):
        if c not in commands and c not in PENDING_COMMANDS: bad.append(f"{where}: `clvq {c}` is not a command (commands: {sorted(commands)})")
    return bad


def test_problems_are_found():
    commands = {"main"}
    text = ("Call `run_experiment(cfg)` or `clvq run`; see `clvq_nb.pipeline.nothing` and `no_such_thing`, `Trainer.fit_model`"
            " and `Trainer.train(ds)`.\n```bash\nclvq nope\n```")
    found = problems("x", text, commands)
    assert len(found) == 7, found
    assert any("Trainer has no 'fit_model'" in f for f in found) and any("Trainer has no 'train'" in f for f in found), found
    ok = ("`evaluate_model(model, ds)`, `clvq_nb.trainer.train_clvqvae`, `VectorQuantizer.forward(x)`, `torch.cdist(a, b)`, `clvq main`,"
          " `Trainer.evaluate(ds)`, `TrainConfig.group_by_length`, `Trainer.history`, `ActivationCache.layers`, `Path.exists`")
    assert problems("x", ok, commands) == []


def test_markdown_names_only_what_exists():
    commands = cli_subcommands()
    bad = [p for where, text in markdown_docs() for p in problems(where, text, commands)]
    known = [p for p in bad if any(p.startswith(f) and f"`{n}`" in p for f, n in TO_FIX)]
    assert len(known) == len(TO_FIX), f"fixed: remove them from TO_FIX ({TO_FIX}); still found: {known}"
    new = [p for p in bad if p not in known]
    assert not new, "\n".join(new)


def test_index_lists_every_notebook_and_command():
    text = "\n".join("".join(c["source"]) for c in json.loads((NBS / "index.ipynb").read_text())["cells"] if c["cell_type"] == "markdown")
    nbs = [p.relative_to(NBS).with_suffix("").as_posix() for p in sorted(NBS.rglob("*.ipynb"))
           if p.name != "index.ipynb" and ".ipynb_checkpoints" not in p.parts]
    missing = [n for n in nbs if f"`{n}`" not in text and f"`{n.split('/')[-1]}`" not in text]
    assert not missing, f"nbs/index.ipynb does not list {missing}"
    cmds = sorted(c for c in cli_subcommands() | set(PENDING_COMMANDS) if f"`clvq {c}" not in text)
    assert not cmds, f"nbs/index.ipynb does not list the commands {cmds}"
