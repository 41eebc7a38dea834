"""Error types shared across the package. A leaf: it imports nothing of polyjax, so any
module can raise these without an import cycle."""


class ConfigError(ValueError):
  """A config value that cannot be trained; the message names the field."""


def check_field(ok: bool, field: str, rule: str, value) -> None:
  """ConfigError naming config field `field` and its `rule` unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{field} must be {rule}, got {value!r}")


def check_known(field: str, value, valid) -> None:
  """ConfigError naming config field `field` and its valid values unless `value` is one."""
  if value not in valid:
    raise ConfigError(f"config.{field}={value!r} is not known; valid: {', '.join(sorted(valid))}")
