# k3sfleet-coordinator %postun ($1: 0 erase, 1 upgrade): reload units; on
# upgrade restart a running coordinator on the new binary. The database
# (/var/lib/k3sfleet/coordinator), the fleet CA (/etc/k3sfleet/pki) and the
# k3sfleet user are kept: rpm has no purge.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart k3sfleet-coordinator.service >/dev/null 2>&1 || :
    fi
fi
