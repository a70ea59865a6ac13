"""The Hyper-V driver: switches, host vNIC IP/DNS, NetNat, SPAN, VHDX and VMs.

- :mod:`labctl.hyperv.scripts`: renders ``hyperv/templates/**`` (structure only) into steps;
- :mod:`labctl.hyperv.facts`: the facts model read by ``facts/read`` in one round trip, and
  the ownership marker (``managed-by: labctl lab=<lab>`` in VM and switch Notes);
- :mod:`labctl.hyperv.diff`: the pure diff, playbook + facts -> Plan + pre-flight blockers;
- :mod:`labctl.hyperv.provider`: :class:`~labctl.hyperv.provider.HyperVProvider`, the
  :class:`labctl.core.model.Provider` used by ``labctl plan|up|down|status``.
"""
