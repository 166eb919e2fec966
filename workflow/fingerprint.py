"""Content hashes: of files and output directories (manifests), of a stage's code, of a stage run.

A stage's fingerprint is the hash of

* its inputs' content: the manifest hash of each upstream output (the sha256 of every file
  under it, by relative path) and the bytes of external inputs (WARC files, seed lists, block
  lists), never their modification times;
* its configuration: its config section, plus the shared sections it reads (model, sources);
* its code version: the source of its module and of every project module that module imports,
  transitively (found by reading their ``import`` statements), the data files the stage declares
  (word lists) and the gin files it is run with, with their includes.

Same fingerprint and an intact output: the stage is skipped. Anything else: it runs again.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
from typing import Any, Iterable, Mapping

from workflow import stages as stages_lib

PROJECT_PACKAGES = ("pipelines", "model", "tasks", "workflow")
_CHUNK = 1 << 20
_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.M)
GIN_DIR = os.path.join(stages_lib.REPO_ROOT, "gin")


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def digest(record: Any) -> str:
  """sha256 of a JSON-able record in its canonical form."""
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def manifest(path: str) -> dict[str, list]:
  """``{relative path: [size, sha256]}`` of every file under ``path`` (or of ``path`` itself)."""
  if os.path.isfile(path):
    return {os.path.basename(path): [os.path.getsize(path), sha256_file(path)]}
  files = {}
  for root, dirs, names in os.walk(path):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      files[os.path.relpath(full, path)] = [os.path.getsize(full), sha256_file(full)]
  return files


def files_hash(paths: Iterable[str]) -> str:
  """The content hash of a list of files (the WARC files a glob matched), by base name."""
  return digest({os.path.basename(p): sha256_file(p) for p in sorted(paths)})


def _module_file(module: str) -> str | None:
  base = os.path.join(stages_lib.REPO_ROOT, *module.split("."))
  for candidate in (base + ".py", os.path.join(base, "__init__.py")):
    if os.path.isfile(candidate):
      return candidate
  return None


def _imports(path: str, module: str) -> set[str]:
  """The project modules a source file imports (``import a.b``, ``from a import b``, relative)."""
  with open(path, "rb") as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
      else:
        base = node.module or ""
      names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] in PROJECT_PACKAGES:
        # `import a.b.c` also imports a and a.b.
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  return found


@functools.lru_cache(maxsize=None)
def module_closure(module: str) -> tuple[str, ...]:
  """Repo-relative source files of ``module`` and every project module it imports, sorted."""
  seen: dict[str, str] = {}
  todo = [module]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    path = _module_file(name)
    if path is None:
      continue  # `from pkg import function`: not a module.
    seen[name] = path
    todo.extend(_imports(path, name) - set(seen))
  return tuple(sorted(os.path.relpath(p, stages_lib.REPO_ROOT) for p in seen.values()))


def gin_closure(files: Iterable[str]) -> list[str]:
  """Repo-relative gin files and, transitively, the files they include."""
  seen: list[str] = []
  todo = [os.path.join(stages_lib.REPO_ROOT, f) if not os.path.isabs(f) else f for f in files]
  while todo:
    path = todo.pop(0)
    if path in seen:
      continue
    seen.append(path)
    with open(path, encoding="utf-8") as f:
      for include in _INCLUDE.findall(f.read()):
        for base in (os.path.dirname(path), GIN_DIR):
          candidate = os.path.join(base, include)
          if os.path.isfile(candidate):
            todo.append(candidate)
            break
  return sorted(os.path.relpath(p, stages_lib.REPO_ROOT) for p in seen)


def _tree_files(path: str) -> list[str]:
  full = os.path.join(stages_lib.REPO_ROOT, path)
  if os.path.isfile(full):
    return [path]
  return sorted(os.path.relpath(os.path.join(root, n), stages_lib.REPO_ROOT)
                for root, _, names in os.walk(full) for n in names
                if not n.endswith(".pyc"))


def code_files(stage: stages_lib.Stage, model: Mapping[str, Any] | None = None) -> list[str]:
  """Every repo file whose content is part of ``stage``'s code version."""
  files = set(module_closure(stage.module))
  for data in stage.code_data:
    files.update(_tree_files(data))
  if stage.uses_model and model:
    files.update(gin_closure(list(model["gin_files"]) + [
        d for d in stage.code_data if d.endswith(".gin")]))
  return sorted(files)


def code_version(stage: stages_lib.Stage, model: Mapping[str, Any] | None = None) -> str:
  return digest({f: sha256_file(os.path.join(stages_lib.REPO_ROOT, f))
                 for f in code_files(stage, model)})
