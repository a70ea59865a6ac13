"""The provider registry: the playbook's ``provider:`` kind -> how to build that provider.

A new provider kind is its driver folder (``labctl/<kind>/provider.py`` implementing
:class:`labctl.core.model.Provider`) plus one line in :data:`PROVIDERS`. Providers take
explicit arguments; the factories here pick them out of the :class:`LabContext`.
"""

from __future__ import annotations

from collections.abc import Callable

from labctl.core.context import LabContext
from labctl.core.errors import UsageError
from labctl.core.model import Provider


def _hyperv(ctx: LabContext) -> Provider:
    from labctl.hyperv.provider import HyperVProvider
    from labctl.transport.powershell import PowerShellRunner
    from labctl.transport.runners import make_runner

    pb = ctx.playbook
    hv = pb.hyperv
    if hv is None:
        raise UsageError("the playbook has no hyperv: section (host, transport)",
                         hint="add hyperv: {host: ..., transport: winrm|ssh|local}")

    def runner() -> PowerShellRunner:
        return make_runner(hv, ctx.prompt_fn)

    return HyperVProvider(pb, runner_factory=runner)


def _netns(ctx: LabContext) -> Provider:
    from labctl.netns.provider import NetnsProvider

    return NetnsProvider(ctx.loaded)


#: provider kind -> factory. One line per kind.
PROVIDERS: dict[str, Callable[[LabContext], Provider]] = {
    "hyperv": _hyperv,
    "netns": _netns,
}


def make_provider(ctx: LabContext) -> Provider:
    """The provider for ``ctx``'s playbook (or the one ``ctx.provider_factory`` builds)."""
    if ctx.provider_factory is not None:
        provider: Provider = ctx.provider_factory(ctx)
        return provider
    kind = ctx.playbook.provider
    factory = PROVIDERS.get(kind)
    if factory is None:
        raise UsageError(f"unknown provider {kind!r}",
                         hint=f"use one of: {', '.join(sorted(PROVIDERS))}")
    return factory(ctx)
