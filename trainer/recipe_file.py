"""Reading a recipe file into the one YAML document it holds, refusing whatever a recipe never is.

A recipe is a small UTF-8 text file. Anything else is a ConfigError (one line on stderr, exit code 2), never a
traceback or a hang: a path that cannot be read (missing, a directory, no permission), a file larger than
MAX_BYTES, bytes that are not UTF-8, an empty document, YAML that does not parse or nests deeper than
MAX_DEPTH, and aliases that expand into more than MAX_VALUES values (a "billion laughs" document is a few lines)
or into themselves. The size is counted on the composed node graph, where an alias is one shared node, so
counting costs the document's own size, not its expansion.
"""
from __future__ import annotations
import yaml
from .config import ConfigError

MAX_BYTES = 1 << 20       # 1 MiB; the recipes in recipes/ are about 2 KiB
MAX_VALUES = 100_000      # scalars, lists and mappings after expanding aliases; a recipe has about 100
MAX_DEPTH = 64            # levels of nesting; a recipe has 3 or 4


def read_recipe(path, loader):
  """The parsed YAML document of the recipe at `path` (loader: a yaml Loader class)."""
  try:
    with open(path, "rb") as f: data = f.read(MAX_BYTES + 1)
  except OSError as e:
    raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
  if len(data) > MAX_BYTES: raise ConfigError(f"recipe {path} is larger than {MAX_BYTES >> 20} MiB, which no recipe is")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"recipe {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None
  parser = None
  try:
    parser = loader(text)            # the reader refuses characters YAML does not allow here
    node = parser.get_single_node()
    if node is None: raise ConfigError(f"recipe {path} is empty")
    _check_expansion(node, path)
    return parser.construct_document(node)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    raise ConfigError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
  except RecursionError:    # the parser recurses per level: deep enough documents stop it before the check below
    raise ConfigError(_too_deep(path)) from None
  finally:
    if parser is not None: parser.dispose()


def _too_deep(path): return f"recipe {path} nests deeper than {MAX_DEPTH} levels, which no recipe does"


def _children(node) -> list:
  if isinstance(node, yaml.MappingNode): return [n for pair in node.value for n in pair]
  if isinstance(node, yaml.SequenceNode): return list(node.value)
  return []


def _check_expansion(root, path):
  """Count the values the document expands into (shared alias nodes once each, by memo) and its depth, without
  recursion."""
  size, open_ = {}, set()     # node id -> expanded size; ids whose subtree is being counted
  stack = [(root, False, 1)]
  while stack:
    node, done, depth = stack.pop()
    if depth > MAX_DEPTH: raise ConfigError(_too_deep(path))
    if done:
      open_.discard(id(node))
      size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
      if size[id(node)] > MAX_VALUES:
        raise ConfigError(f"recipe {path}: aliases expand into more than {MAX_VALUES:,} values (line {node.start_mark.line + 1}), which no recipe needs")
      continue
    if id(node) in size: continue
    if id(node) in open_: raise ConfigError(f"recipe {path}: an alias at line {node.start_mark.line + 1} refers to itself")
    open_.add(id(node))
    stack.append((node, True, depth))
    stack.extend((c, False, depth + 1) for c in _children(node) if id(c) not in size)
