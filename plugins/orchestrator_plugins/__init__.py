"""The built-in handler plugins (``log``, ``http``, ``slack``, ``hubspot``, ``retry``),
registered through the ``orchestrator.plugins`` entry-point group exactly as third-party plugins
are. They live in the repository's ``plugins/`` folder and install as ``orchestrator_plugins``,
so a folder named ``plugins`` wherever the daemon runs cannot hide them."""
