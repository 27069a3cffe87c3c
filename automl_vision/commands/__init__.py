"""Sub-commands of ``automl-vision``; see :mod:`automl_vision.cli`."""


def add_plugin_option(p) -> None:
    """``--plugin`` (repeatable), as ``search`` has it: for every command that loads plugins.

    The plugins a run was searched with are never loaded from its run directory (a run
    directory is data), so a local plugin is given here again.
    """
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="load a plugin module by import path or .py file (repeatable); also $AUTOML_VISION_PLUGINS. "
                        "The plugins named in a run directory are never loaded from it")


def plugins_into_env(env, plugins: list[str]) -> None:
    """Pass ``--plugin`` modules to code that reads ``$AUTOML_VISION_PLUGINS`` (a joined study's
    worker, the dashboard's Streamlit process), after those already there; a ``.py`` path is
    made absolute so it is found from any working directory."""
    import os

    from automl_vision.plugins import ENV_PLUGINS

    given = [os.path.abspath(m) if m.endswith(".py") else m for m in plugins]
    env[ENV_PLUGINS] = ",".join(filter(None, [env.get(ENV_PLUGINS, ""), *given]))
