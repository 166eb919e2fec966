"""Gin plumbing shared by `model.train`, `model.eval` and `model.infer` (t5x's gin_utils).

The entry points take t5x's flags:

  --gin_file=gin/small_cpu.gin            (repeatable; resolved against --gin_search_paths)
  --gin_bindings="TRAIN_STEPS = 300"      (repeatable)
  --gin.TRAIN_STEPS=300                   (shorthand, rewritten to a --gin_bindings flag)
  --gin_search_paths=/my/gin,gin          (comma separated)

Binding values are gin literals, so strings are quoted: `--gin.MODEL_DIR="'/tmp/run'"`. As a
convenience a value that is no Python literal and no gin reference (`@...`, `%...`) is taken as a
string, so `--gin.MODEL_DIR=/tmp/run` also works.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from typing import Any, Mapping, Optional, Sequence

import gin
from absl import flags

_GIN_SHORTHAND = re.compile(r"^--gin\.([A-Za-z_][\w./]*)=(.*)$", re.S)
# The repository's gin/ folder: always searched, so `--gin_file=gin/small_cpu.gin` and
# `include 'models/small.gin'` work from any working directory.
REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def define_gin_flags():
  """Defines --gin_file, --gin_bindings and --gin_search_paths (once per process)."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, applied after the files.")
  flags.DEFINE_list("gin_search_paths", [], "Folders searched for gin files and includes.")


def _as_gin_value(value: str) -> str:
  """Leaves gin literals/references alone; quotes a bare path or word so it parses as a str."""
  stripped = value.strip()
  if not stripped or stripped[0] in "@%" or stripped.startswith(("'", '"')):
    return value
  try:
    ast.literal_eval(stripped)
    return value
  except (ValueError, SyntaxError):
    return repr(stripped)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns each `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE` (as t5x does)."""
  out = []
  for arg in argv:
    match = _GIN_SHORTHAND.match(arg)
    if match:
      out.append(f"--gin_bindings={match.group(1)} = {_as_gin_value(match.group(2))}")
    else:
      out.append(arg)
  return out


_MACRO_BINDING = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=")


def _macro_defined(name: str) -> bool:
  try:
    gin.query_parameter(f"%{name}")
    return True
  except ValueError:
    return False


def _quiet_gin_search(record) -> bool:
  """Drops gin's 'Path not found' errors, logged for every search path an include is not in."""
  return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              gin_search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; any error names the file or binding at fault.

  Gin itself rejects an unknown configurable or parameter; we re-raise with the offending binding
  so the user sees it before any data is read or any compute is spent. A binding of an UPPER_CASE
  macro must name a macro the files already define (all our gin files declare theirs).
  A `%gin.REQUIRED` value left unset is reported when the function that needs it is called
  (so eval does not need train's TRAIN_STEPS), still before any compute.
  """
  for path in [*gin_search_paths, ".", REPO_GIN_DIR, os.path.dirname(REPO_GIN_DIR)]:
    gin.add_config_file_search_path(os.path.abspath(path))
  logging.getLogger().addFilter(_quiet_gin_search)
  try:
    _parse_files_and_bindings(gin_files, gin_bindings, gin_search_paths)
  finally:
    logging.getLogger().removeFilter(_quiet_gin_search)
  check_macro_types(gin_bindings)


def _parse_files_and_bindings(gin_files, gin_bindings, gin_search_paths):
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except (IOError, OSError) as e:
      raise ValueError(f"Cannot read gin file {gin_file!r} (searched {list(gin_search_paths)} "
                       f"and {REPO_GIN_DIR}): {e}") from e
    except Exception as e:
      raise ValueError(f"Error in gin file {gin_file!r}: {e}") from e
  for binding in gin_bindings:
    macro = _MACRO_BINDING.match(binding)
    if macro and not _macro_defined(macro.group(1)):
      raise ValueError(
          f"Invalid gin binding {binding!r}: macro {macro.group(1)} is not defined by the gin files "
          f"{list(gin_files)} (a misspelt macro would otherwise be silently ignored)")
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise ValueError(f"Invalid gin binding {binding!r}: {e}") from e


# The documented macros (gin/runs/*.gin) and the types their values must have. Checked right
# after parsing, so a string for TRAIN_STEPS or a float batch size is an error naming the macro,
# not a failure deep inside the trainer.
_INT = (int,)
_NUMBER = (int, float)
_OPTIONAL = (type(None),)
MACRO_TYPES: dict[str, tuple[type, ...]] = {
    "TRAIN_STEPS": _INT, "BATCH_SIZE": _INT, "LOG_PERIOD": _INT, "SAVE_PERIOD": _INT,
    "EVAL_PERIOD": _INT, "EVAL_BATCHES": _INT + _OPTIONAL, "KEEP_CHECKPOINTS": _INT + _OPTIONAL,
    "NUM_MICROBATCHES": _INT, "SEED": _INT, "DATA_SEED": _INT + _OPTIONAL,
    "WARMUP_STEPS": _INT, "LEARNING_RATE": _NUMBER, "VOCAB_SIZE": _INT + _OPTIONAL,
    "EXAMPLES_PER_STEP": _INT + _OPTIONAL,
    "MODEL_DIR": (str,), "DATA_DIR": (str,) + _OPTIONAL, "INIT_CHECKPOINT": (str,) + _OPTIONAL,
    "MIXTURE_OR_TASK_NAME": (str,), "USE_CACHED_TASKS": (bool,),
    "SHUFFLE_TRAIN_EXAMPLES": (bool,), "TASK_FEATURE_LENGTHS": (dict,),
}


def _type_names(types) -> str:
  return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def check_macro_types(bindings: Sequence[str] = ()) -> None:
  """Raises a ValueError naming the macro (and the binding that set it) whose value has the
  wrong type; unset (`%gin.REQUIRED`) macros and references (`@f()`) are left to their users."""
  for name, types in MACRO_TYPES.items():
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      continue
    if isinstance(value, gin.config.ConfigurableReference) or value is gin.REQUIRED:
      continue  # %gin.REQUIRED, %OTHER_MACRO, @f(): checked where they are used.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
      source = [b for b in bindings if (m := _MACRO_BINDING.match(b)) and m.group(1) == name]
      where = f" (set by {source[-1]!r})" if source else " (set in the gin files)"
      raise ValueError(f"gin macro {name} = {value!r} has type {type(value).__name__}, but must be "
                       f"{_type_names(types)}{where}")


def check_positive_int(name: str, value) -> None:
  """For the trainer's own arguments (callers that bypass gin): a clear error naming `name`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")


def parse_gin_flags() -> None:
  """Parses the gin flags of this process (call inside `main` after absl parsed argv)."""
  from absl import logging as absl_logging
  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every file it writes at INFO; show warnings and up unless --verbosity is given.
    absl_logging.set_verbosity(absl_logging.WARNING)
  parse_gin(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths)


def run(main):
  """`absl.app.run(main)` with the `--gin.X=Y` shorthand rewritten first."""
  from absl import app
  define_gin_flags()
  app.run(main, flags_parser=lambda argv: flags.FLAGS(rewrite_gin_args(argv)))


# ---- set-up shared by train / eval / infer ----
# (Kept out of the entry-point modules: a configurable defined in a module run as __main__ and
# also imported under its own name would be registered twice and become ambiguous to gin.)


_REGISTERED_DATA_DIRS: set[str] = set()


def register_data_dir(data_dir: Optional[str]) -> None:
  """Registers the gf_* seqio tasks of DATA_DIR (once per process); no-op when unset."""
  if not data_dir:
    return
  key = os.path.abspath(data_dir)
  if key in _REGISTERED_DATA_DIRS:
    return
  if not os.path.isdir(data_dir):
    raise ValueError(f"DATA_DIR {data_dir} does not exist")
  import tasks  # The seqio task registry; imported lazily so tests can register their own tasks.
  tasks.register_data_dir(data_dir)
  _REGISTERED_DATA_DIRS.add(key)


@gin.configurable
def build_model(config_name: str = "small",
                vocab_size: Optional[int] = None,
                data_dir: Optional[str] = None,
                dtype: Optional[str] = None,
                config_overrides: Optional[Mapping[str, Any]] = None,
                z_loss: float = 0.0,
                label_smoothing: float = 0.0,
                loss_normalizing_factor: Optional[float] = None):
  """A `DecoderOnlyModel`. The vocab size is VOCAB_SIZE, else DATA_DIR's tokenizer's, else the
  named config's; `dtype` is the compute dtype (params stay float32)."""
  from model.config import get_config
  from model.models import DecoderOnlyModel
  overrides = dict(config_overrides or {})
  if vocab_size is None and data_dir:
    import tasks
    vocab_size = tasks.get_vocabulary(data_dir).vocab_size
  if vocab_size is not None:
    overrides["vocab_size"] = int(vocab_size)
  if dtype is not None:
    overrides["dtype"] = dtype
  config = get_config(config_name, **overrides)
  return DecoderOnlyModel(config, z_loss=z_loss, label_smoothing=label_smoothing,
                          loss_normalizing_factor=loss_normalizing_factor)


def check_vocab(model, mixture_or_task_name: str) -> None:
  """Token ids the data can produce must fit the embedding table (else lookups silently clamp)."""
  from model import data as data_lib
  provider = data_lib.get_task_or_mixture(mixture_or_task_name)
  feature = provider.output_features.get("targets")
  if feature is None:
    return
  data_vocab = feature.vocabulary.vocab_size
  if data_vocab > model.config.vocab_size:
    raise ValueError(f"Task {mixture_or_task_name} uses a vocabulary of {data_vocab} ids but the "
                     f"model has vocab_size {model.config.vocab_size}; set VOCAB_SIZE or DATA_DIR")
