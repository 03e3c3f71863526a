"""Which environment variables each service reads, found in its code rather than listed.

A service is an `exchange` subcommand (services/cli.py maps it to its module). Its code
is that module and every `services` module it imports, transitively; in that code every
read of the environment is found: `os.environ.get(NAME)`, `os.environ[NAME]`,
`os.getenv(NAME)`, `NAME in os.environ`, and the same through a name bound to
`os.environ` (`env = os.environ`, or a parameter defaulting to it). NAME may be a string
or a constant, also one imported from another module. A read whose name cannot be
resolved is an error, so a new way of reading settings cannot slip past unnoticed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import services
from services.cli import COMMANDS

SERVICES_ROOT = Path(services.__file__).parent


@dataclass(frozen=True)
class Module:
    name: str
    tree: ast.Module
    # Module-level names: string constants, and names imported from other modules.
    constants: dict[str, str]
    imported: dict[str, tuple[str, str]]  # local name -> (module, name there)


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _source(module: str) -> Path | None:
    """The file of a `services` module (found without importing anything)."""
    base = SERVICES_ROOT.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`, which never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


@cache
def load(module: str) -> Module:
    path = _source(module)
    if path is None:
        raise LookupError(f"no Python source for {module}")
    tree = ast.parse(path.read_text(), str(path))
    constants: dict[str, str] = {}
    imported: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    return Module(module, tree, constants, imported)


def imports(module: str) -> set[str]:
    """The `services` modules `module` imports (outside TYPE_CHECKING blocks)."""
    found: set[str] = set()
    tree = load(module).tree
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("services.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("services"):
                continue
            found.add(node.module)
            # `from services.common import keys` imports the module services.common.keys.
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if _source(f"{node.module}.{alias.name}")}
    return {name for name in found if _source(name)}


def closure(module: str) -> set[str]:
    """`module` and every `services` module it imports, transitively, with the packages
    that hold them (their __init__ runs first)."""
    seen: set[str] = set()
    parts = module.split(".")
    todo = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            for imported in imports(name) - seen:
                parts = imported.split(".")
                todo.extend(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return seen


def resolve(module: str, node: ast.expr) -> str:
    """The string a variable-name expression stands for."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        here = load(module)
        if node.id in here.constants:
            return here.constants[node.id]
        if node.id in here.imported:
            source, name = here.imported[node.id]
            return resolve(source, ast.Name(id=name))
    raise ValueError(f"{module}: cannot tell which variable `{ast.unparse(node)}` names")


def env_reads(module: str) -> set[str]:
    """The environment variables `module`'s own code reads."""
    return reads_in(load(module).tree, lambda node: resolve(module, node))


def reads_in(tree: ast.Module, name_of: Callable[[ast.expr], str]) -> set[str]:
    """The variables the code of `tree` reads; `name_of` resolves a name expression."""
    aliases = {"environ"}  # `from os import environ`
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_environ(node.value):
            aliases |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults,
                             strict=True))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d]
            aliases |= {arg.arg for arg, default in pairs if _is_environ(default)}

    def is_env(node: ast.expr) -> bool:
        return _is_environ(node) or (isinstance(node, ast.Name) and node.id in aliases)

    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = node.func
            if (func.attr == "get" and is_env(func.value)) or (
                    func.attr == "getenv" and isinstance(func.value, ast.Name)
                    and func.value.id == "os"):
                names.add(name_of(node.args[0]))
        elif isinstance(node, ast.Subscript) and is_env(node.value):
            names.add(name_of(node.slice))
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1
              and isinstance(node.ops[0], ast.In | ast.NotIn) and is_env(node.comparators[0])):
            names.add(name_of(node.left))
    return names


def service_env(command: str) -> set[str]:
    """Every environment variable the `exchange <command>` process may read."""
    module = COMMANDS[command][0]
    return set().union(*(env_reads(name) for name in closure(module)))
