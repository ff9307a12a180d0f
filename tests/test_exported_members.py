import inspect
import pkgutil

import dfdb
import dfdb.drivers


def test_all_is_the_public_namespace() -> None:
    # submodules become attributes of the package once anything imported them: not names of it
    submodules = {module.name for module in pkgutil.iter_modules(dfdb.__path__)}
    public = {name for name in vars(dfdb) if not name.startswith("_")} - submodules - {"annotations"}
    assert set(dfdb.__all__) - {"__version__"} == public


def test_every_exported_name_exists_and_is_documented() -> None:
    for module in (dfdb, dfdb.drivers):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
