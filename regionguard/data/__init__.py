"""Fresh data without a new release: `regionguard data update | rollback | status`.

update fetches the sources regionguard ships (Zoom's range files, AWS ip-ranges.json, Oracle's
public_ip_ranges.json) from their official URLs or mirrors, checks each before anything changes,
and installs the new set atomically under the data root (outside the installed package, see
regionguard.core.paths.data_root); the previous set is kept for rollback. Which set is in force
and how old it is are the core's business (regionguard.core.datasets); running front ends see a
new set through their EngineHolder (regionguard.core.reload) and switch without a restart.
"""
