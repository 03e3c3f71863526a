"""Loading the Lua scripts of the services, with the shared account-update publisher."""

from __future__ import annotations

from importlib import resources

_PUBLISH = resources.files("services.common").joinpath("publish_update.lua").read_text()


def lua(package: str, name: str, *, publishes: bool = False) -> str:
    """The script `name` of `package`; `publishes` prepends `publish_update`."""
    body = resources.files(package).joinpath(name).read_text()
    return _PUBLISH + "\n" + body if publishes else body
