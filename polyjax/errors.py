"""Error types shared across the package. A leaf: it imports nothing of polyjax, so any
module can raise these without an import cycle."""


class ConfigError(ValueError):
  """A config value that cannot be trained; the message names the field."""
