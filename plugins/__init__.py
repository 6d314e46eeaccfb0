"""Built-in handler plugins, registered through the ``orchestrator.plugins`` entry-point group
exactly as third-party plugins are (none yet: rules and plugins come with the plugin issue)."""
