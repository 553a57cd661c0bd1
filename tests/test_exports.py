"""`from clvq_nb.<module> import *` exports no method bodies: methods are added with fastcore's `@patch`
(`def forward(self: VectorQuantizer, ...)`), never by assigning a module-level function to the class."""
import importlib, inspect, pkgutil

import pytest

import clvq_nb

MODULES = sorted(m.name for m in pkgutil.iter_modules(clvq_nb.__path__) if not m.name.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_import_star_exports_no_methods(name):
    mod = importlib.import_module(f"clvq_nb.{name}")
    ns: dict = {}
    exec(f"from clvq_nb.{name} import *", ns)
    classes = [v for v in vars(mod).values() if inspect.isclass(v) and v.__module__ == mod.__name__]
    for k, v in ns.items():
        if not inspect.isfunction(v) or v.__module__ != mod.__name__: continue
        params = list(inspect.signature(v).parameters)
        assert not params or params[0] != "self", f"clvq_nb.{name}.{k} takes self: add it to its class with @patch"
        owners = [c.__name__ for c in classes if inspect.unwrap(getattr(c, k, None) or (lambda: 0)) is inspect.unwrap(v)]
        assert not owners, f"clvq_nb.{name}.{k} is also {owners[0]}.{k}: add it with @patch instead of assigning it"


def test_patched_methods_are_on_their_classes():
    from clvq_nb.quantizer import VectorQuantizer
    from clvq_nb.trainer import Trainer
    for cls, names in ((VectorQuantizer, "forward encode decode get_output_from_indices set_codebook init_codebook reset_usage usage_stats"),
                       (Trainer, "fit evaluate save resume")):
        for n in names.split(): assert callable(getattr(cls, n)), f"{cls.__name__}.{n}"
    import clvq_nb.quantizer as q
    assert not any(callable(getattr(q, n, None)) for n in ("forward", "encode", "decode"))
