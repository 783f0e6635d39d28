"""Process set-up shared by the entry points (no flags defined here)."""
from __future__ import annotations


class _QuietLibraries:
    """Drops INFO chatter from library internals (orbax logs every file it renames)."""
    NOISY = ("/orbax/", "/jax/_src/xla_bridge.py")

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def quiet_libraries() -> None:
    from absl import logging
    logging.get_absl_handler().addFilter(_QuietLibraries())


def enable_compilation_cache() -> None:
    """Persists compiled programs, so a resumed or repeated run skips most compilation.

    Uses $JAX_COMPILATION_CACHE_DIR when set, else ~/.cache/vlm_jax/xla (next to the datasets).
    """
    import os

    import jax

    from vlm_jax.data.builtin import default_data_dir
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", os.path.join(default_data_dir(), "xla"))


def collect_garbage_less() -> None:
    """Tracing a model allocates millions of short-lived objects; with Python's default
    thresholds the collector ran so often, each full pass walking everything the imports left
    (JAX, Flax, Orbax), that it took 7% of a small run's CPU. The imports' objects move out of
    its sight and it runs less often (cycles are still collected)."""
    import gc
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def set_up() -> None:
    """What every entry point that compiles does first: quiet logs, the compilation cache, the
    garbage collector's pace."""
    quiet_libraries()
    enable_compilation_cache()
    collect_garbage_less()


# What a user's input raises: a missing or misplaced path, a bad value (config keys and types
# included: ConfigError is a ValueError), a table without the column named.
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                ValueError, KeyError)


def run(main, name: str) -> None:
    """`absl.app.run(main)` for the command `name`: a flag that does not parse (a recipe that
    cannot load included), a usage error or an input error ends it with one line, `name:
    message`, and exit status 1. The traceback is logged at debug level (--verbosity=1)."""
    from absl import app, flags, logging

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:        # a recipe that failed to load: its error last
            raise SystemExit(f"{name}: {last_line(e)}") from None
        except (AttributeError, KeyError) as e:     # --config.KEY=VALUE with an unknown KEY
            raise unknown_key(name, e) from None

    def guarded(argv):
        try:
            return main(argv)
        except (app.UsageError, *INPUT_ERRORS) as e:
            logging.debug("%s failed", name, exc_info=True)
            text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise SystemExit(f"{name}: {text}".splitlines()[0]) from None

    app.run(guarded, flags_parser=parse)


def unknown_key(name: str, error: Exception) -> SystemExit:
    """The one line for --config.KEY=VALUE naming a key the config lacks (ml_collections'
    KeyError, with its suggestion)."""
    text = str(error).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    return SystemExit(f"{name}: unknown config key {text}")


def last_line(error: Exception) -> str:
    """The last non-empty line of an error's message (ml_collections ends a recipe's load
    failure, traceback included, with the recipe's own error)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
